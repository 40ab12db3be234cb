"""Self-contained HTML reports: one run (``p2pfed report RUN_DIR``) and runs side by side
(``p2pfed compare RUN_DIR...``).

A report is one HTML file that opens offline and can be mailed around: every plot is a PNG
embedded as a ``data:`` URI, the style sheet and the one small script (click a table header
to sort) are inline, and nothing is fetched. It reads only what a run directory holds
(:mod:`p2pfed.results`): ``config.yaml``, ``summary.json``, ``metrics.jsonl``, ``edges.csv``,
``label_histograms.json``, ``attacks.json`` with its ``attack-*.png`` grids and
``availability.csv``. A run that failed, or one still going, gets a report of what it wrote so
far; a section whose file is missing says so instead of vanishing.

Sections of a run's report, each an element with an ``id`` (the browser test looks for them):
summary, accuracy (every peer, the mean and the 10–90 % spread over time), consensus
distance, topology (peers coloured by role, edges by protection mode, width by bytes
carried, eavesdroppers and on-path attackers drawn on the links they hold), per-edge bytes
(payload / crypto / metadata heatmaps), data (label histogram per peer), attacks (table and
reconstruction grids), privacy (ε per peer), robustness, availability, timings and the
resolved config.

Large runs: per-peer lines are drawn up to 64 peers (above that, the spread bands carry the
information), peer labels up to 32, and the per-edge heatmaps up to 128 participants
(above that, a histogram of per-edge bytes by kind).

Pure: no Ray, no clocks; matplotlib draws off-screen (Agg, no pyplot state).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from p2pfed.config import ExperimentConfig
from p2pfed.errors import P2PFedError
from p2pfed.results import (
    attack_line,
    headline_figures,
    read_edges,
    read_json,
    read_metrics,
    read_summary,
    write_atomic,
)

REPORT_FILE = "report.html"
COMPARISON_FILE = "comparison.html"

#: peer roles and their colours (the legend of the topology and of per-peer plots)
ROLE_COLOURS = {
    "honest": "#4C72B0",
    "poisoner": "#C44E52",
    "curious": "#DD8452",
    "eavesdropper": "#8172B3",
    "coordinator": "#55A868",
}
#: colours of the edges' protection modes (the run's mode; attacked links on top)
MODE_COLOURS = {
    "plain": "#7f7f7f",
    "aead": "#2a9d8f",
    "secagg": "#e9c46a",
    "secret-share": "#f4a261",
    "he": "#264653",
    "dp": "#9c89b8",
    "dp-sgd": "#9c89b8",
}
MAX_PEER_LINES = 64
MAX_LABELS = 32
MAX_HEATMAP = 128
MAX_SIDE_BY_SIDE = 12  # runs whose own plots a comparison repeats (2 images each)


class ReportError(P2PFedError):
    """A run directory a report cannot be made of (no summary, no config, not a run)."""


# --- reading a run directory ---------------------------------------------------------------


@dataclass
class RunData:
    """Everything a report shows, read from one run directory."""

    run_dir: Path
    name: str
    config: dict[str, Any]  # config.yaml as written
    config_text: str
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    edges: list[dict[str, int]]
    attacks: list[dict[str, Any]]
    labels: dict[str, Any] | None
    spells: list[dict[str, Any]]
    missing: list[str] = field(default_factory=list)
    #: the validated config, ``None`` when config.yaml no longer validates (edited by hand,
    #: written by another version): roles, protection and the topology are then unknown
    cfg: ExperimentConfig | None = None

    @property
    def n(self) -> int:
        if self.cfg is not None:
            return self.cfg.num_peers
        return int(self.summary.get("peers") or self.config.get("topology", {}).get("n") or 0)

    @property
    def protection(self) -> str:
        from p2pfed.config import protection

        return protection(self.cfg) if self.cfg is not None else "unknown"

    @property
    def has_coordinator(self) -> bool:
        """Whether participant ``n`` (a coordinator, or he-gossip's relay) exists."""
        declared = self.cfg is not None and self.cfg.has_coordinator
        return declared or any(max(e["src"], e["dst"]) >= self.n for e in self.edges)

    @property
    def wall(self) -> bool:
        """Whether the run's times are wall seconds (``time.mode: wall``)."""
        mode = self.summary.get("time_mode") or (self.cfg.time.mode if self.cfg else None)
        return bool(mode == "wall")

    @property
    def time_label(self) -> str:
        return "wall time since start (s)" if self.wall else "virtual time (s)"

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Times, a (ticks × peers) matrix of ``key`` (NaN where a peer has no value) and
        the peer ids of its columns."""
        ticks = sorted({int(r["tick"]) for r in self.metrics})
        peers = sorted({int(r["peer"]) for r in self.metrics})
        row_of = {t: i for i, t in enumerate(ticks)}
        col_of = {p: j for j, p in enumerate(peers)}
        times = np.full(len(ticks), np.nan)
        values = np.full((len(ticks), len(peers)), np.nan)
        for r in self.metrics:
            i = row_of[int(r["tick"])]
            times[i] = float(r["t"])
            v = r.get(key)
            if v is not None:
                values[i, col_of[int(r["peer"])]] = float(v)
        return times, values, peers

    def last_accuracy(self) -> dict[int, float]:
        """Each peer's last evaluated test accuracy."""
        last: dict[int, float] = {}
        for r in self.metrics:
            if r.get("test_acc") is not None:
                last[int(r["peer"])] = float(r["test_acc"])
        return last


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; raises :class:`ReportError` when it holds no run. What is
    missing or cut short (a run killed while writing) is noted, and the rest is shown."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    if not (path / "config.yaml").is_file():
        raise ReportError(f"{path}: no config.yaml, so not a run directory")
    missing: list[str] = []
    config_text = (path / "config.yaml").read_text()
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as exc:
        raise ReportError(f"{path / 'config.yaml'}: not YAML ({exc})") from None
    config = config if isinstance(config, dict) else {}
    summary = read_summary(path)
    if summary is None:
        missing.append("summary.json")
        summary = {"status": "running or killed (no summary.json yet)"}
    metrics = _tolerant(read_metrics, path, "metrics.jsonl", missing)
    edges = _tolerant(read_edges, path, "edges.csv", missing)
    attacks = summary.get("attacks")
    if attacks is None:
        loaded = read_json(path / "attacks.json")
        attacks = loaded if isinstance(loaded, list) else []
    labels = read_json(path / "label_histograms.json")
    if not isinstance(labels, dict):
        missing.append("label_histograms.json")
        labels = None
    spells = []
    avail = path / "availability.csv"
    if avail.exists():
        for r in csv.DictReader(io.StringIO(avail.read_text())):
            try:
                spells.append(
                    {
                        "peer": int(r["peer"]),
                        "down": float(r["down"]),
                        "up": float(r["up"]),
                        "how": r["how"],
                    }
                )
            except (KeyError, TypeError, ValueError):
                missing.append("availability.csv rows (cut short)")
    return RunData(
        run_dir=path,
        name=str(summary.get("run_id") or path.name),
        config=config,
        config_text=config_text,
        summary=summary,
        metrics=metrics,
        edges=edges,
        attacks=attacks,
        labels=labels,
        spells=spells,
        missing=missing,
        cfg=_validated(config),
    )


def _tolerant(read: Any, path: Path, name: str, missing: list[str]) -> list[Any]:
    """Rows a reader gets out of a log, noting the log's absence or its lines cut short."""
    if not (path / name).is_file():
        missing.append(name)
        return []
    cut: list[int] = []
    rows: list[Any] = read(path, cut=cut)
    if cut:
        missing.append(f"{name} line {', '.join(map(str, cut))} (cut short)")
    return rows


def _validated(config: Mapping[str, Any]) -> ExperimentConfig | None:
    from p2pfed.config import config_from_mapping

    try:
        return config_from_mapping(config, source="config.yaml")
    except P2PFedError:
        return None


# --- roles and protection ------------------------------------------------------------------


@dataclass
class Roles:
    """Who is who in a run, from its resolved config."""

    peer_role: dict[int, str]
    eavesdroppers: list[tuple[str, list[tuple[int, int]]]]  # name, tapped undirected links
    on_path: list[tuple[str, str, list[tuple[int, int]]]]  # name, action, links
    protection: str


def roles_of(run: RunData, links: Iterable[tuple[int, int]]) -> Roles:
    """Roles from the validated config: poisoners, a curious peer or coordinator, the links
    each eavesdropper taps (a ``target``'s every link among ``links``) and on-path attackers
    hold. A config that no longer validates leaves everyone honest."""
    n = run.n
    role = {p: "honest" for p in range(n)}
    if run.has_coordinator:
        role[n] = "coordinator"
    eaves: list[tuple[str, list[tuple[int, int]]]] = []
    on_path: list[tuple[str, str, list[tuple[int, int]]]] = []
    cfg = run.cfg
    if cfg is None:
        return Roles(role, eaves, on_path, run.protection)
    for _, poisoner in cfg.poisoners:
        role.update({p: "poisoner" for p in poisoner.peers})
    undirected = {_key(a, b) for a, b in links}
    for k, adv in cfg.observers:
        if adv.role == "curious_peer" and adv.peer is not None:
            role[adv.peer] = "curious"
        elif adv.role == "curious_coordinator":
            role[n] = "curious"
        elif adv.role == "eavesdropper":
            tapped = {_key(a, b) for a, b in adv.links or ()}
            if adv.target is not None:
                tapped |= {e for e in undirected if adv.target in e}
            eaves.append((adv.label(k), sorted(tapped)))
    for k, icp in cfg.on_path:
        held = sorted({_key(a, b) for a, b in icp.links})
        on_path.append((icp.label(k), icp.action, held))
    return Roles(role, eaves, on_path, run.protection)


def _key(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a <= b else (b, a)


# --- plots ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_over_time(
    run: RunData, key: str, ylabel: str, *, log: bool = False, title: str = ""
) -> str | None:
    """Every peer's ``key`` over time (thin, coloured by role, up to 64 peers), the mean over
    peers and the 10–90 % band; ``None`` when the run logged no value of it."""
    times, values, peers = run.series(key)
    if log:  # zeros (identical models, the start) have no place on a log axis
        values = np.where(values > 0, values, np.nan)
    if not np.isfinite(values).any():
        return None
    roles = roles_of(run, []).peer_role
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if len(peers) <= MAX_PEER_LINES:
        for j, p in enumerate(peers):
            ax.plot(
                times,
                values[:, j],
                color=ROLE_COLOURS[roles.get(p, "honest")],
                alpha=0.35,
                linewidth=0.8,
            )
    _band(ax, times, values, "black", "mean over peers")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(run.time_label)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    present = sorted({roles.get(p, "honest") for p in peers})
    handles = ax.get_legend_handles_labels()[0]
    if len(peers) <= MAX_PEER_LINES:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], color=ROLE_COLOURS[r], label=f"{r} peer") for r in present]
    ax.legend(handles=handles, loc="best", fontsize=8)
    if title:
        ax.set_title(title)
    return _png(fig)


def _band(
    ax: Any,
    times: np.ndarray,
    values: np.ndarray,
    colour: str,
    label: str,
    band_label: str | None = "10–90 % of peers",
    linestyle: str = "-",
) -> bool:
    """The mean over peers and its 10–90 % band; whether there was anything to draw."""
    ok = np.isfinite(values).any(axis=1)
    t, v = times[ok], values[ok]
    if len(t) == 0:
        return False
    with np.errstate(all="ignore"):
        lo, hi = np.nanpercentile(v, 10, axis=1), np.nanpercentile(v, 90, axis=1)
        mean = np.nanmean(v, axis=1)
    ax.fill_between(t, lo, hi, color=colour, alpha=0.15, linewidth=0, label=band_label)
    ax.plot(t, mean, color=colour, linewidth=2.0, label=label, linestyle=linestyle)
    return True


def plot_topology(run: RunData) -> str:
    """The graph that carried the run: topology edges and every pair that exchanged frames;
    peers coloured by role; edges by the run's protection mode, width by bytes carried;
    eavesdroppers (violet diamonds, dotted to the links they tap) and on-path attackers
    (red dashes over the links they hold) drawn on top."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    n = run.n
    traffic: dict[tuple[int, int], int] = {}
    for e in run.edges:
        k = _key(e["src"], e["dst"])
        traffic[k] = traffic.get(k, 0) + _total(e)
    topo = _topology(run)
    topo_edges = set() if isinstance(topo, str) else {_key(int(a), int(b)) for a, b in topo.edges}
    links = set(traffic) | topo_edges
    roles = roles_of(run, links)
    pos = _layout(run, topo)
    coord = n if run.has_coordinator else None
    if coord is not None:
        centre = np.mean([pos[p] for p in range(n)], axis=0) if n else np.zeros(2)
        pos[coord] = centre
    fig = _figure(8.0, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    most = max(traffic.values(), default=0)
    segs, widths = [], []
    for a, b in sorted(links):
        if a not in pos or b not in pos:
            continue
        segs.append((pos[a], pos[b]))
        carried = traffic.get((a, b), 0)
        widths.append(0.5 + 4.0 * math.sqrt(carried / most) if most else 0.8)
    mode = roles.protection
    colour = MODE_COLOURS.get(mode.split("+")[0], "#7f7f7f")
    alpha = 0.7 if len(segs) <= 4 * max(n, 1) else 0.3
    ax.add_collection(LineCollection(segs, colors=colour, linewidths=widths, alpha=alpha))
    handles = [Line2D([], [], color=colour, linewidth=3, label=f"link: {mode} (width: bytes)")]
    idle = [(pos[a], pos[b]) for a, b in sorted(topo_edges - set(traffic)) if a in pos and b in pos]
    if idle and run.edges:
        ax.add_collection(LineCollection(idle, colors="0.6", linewidths=0.6, linestyles="dotted"))
        handles.append(Line2D([], [], color="0.6", linestyle="dotted", label="no frames carried"))
    for name, action, held in roles.on_path:
        attacked = [(pos[a], pos[b]) for a, b in held if a in pos and b in pos]
        ax.add_collection(
            LineCollection(attacked, colors=ROLE_COLOURS["poisoner"], linewidths=3, linestyles="--")
        )
        handles.append(
            Line2D(
                [],
                [],
                color=ROLE_COLOURS["poisoner"],
                linestyle="--",
                linewidth=2,
                label=f"{name}: on-path ({action})",
            )
        )
    span = _span(pos)
    for slot, (name, tapped) in enumerate(roles.eavesdroppers):
        mids = [(pos[a] + pos[b]) / 2 for a, b in tapped if a in pos and b in pos]
        if not mids:
            continue
        centre = np.mean([pos[p] for p in pos], axis=0)
        spot = np.mean(mids, axis=0)
        away = spot - centre
        norm = float(np.linalg.norm(away))
        spot = spot + (away / norm if norm > 1e-9 else np.array([1.0, 0.0])) * 0.3 * span
        spot = spot + np.array([0.0, 0.06 * span * slot])
        lines = [(spot, m) for m in mids]
        ax.add_collection(
            LineCollection(
                lines, colors=ROLE_COLOURS["eavesdropper"], linewidths=1.0, linestyles=":"
            )
        )
        ax.scatter(
            [spot[0]], [spot[1]], marker="D", s=140, color=ROLE_COLOURS["eavesdropper"], zorder=4
        )
        ax.annotate(name, spot, xytext=(6, 6), textcoords="offset points", fontsize=8)
    people = sorted(pos)
    size = 320.0 if n <= 16 else 180.0 if n <= MAX_LABELS else 40.0
    ax.scatter(
        [pos[p][0] for p in people],
        [pos[p][1] for p in people],
        s=[size * (1.6 if p == coord else 1.0) for p in people],
        c=[ROLE_COLOURS[roles.peer_role.get(p, "honest")] for p in people],
        marker="o",
        edgecolors="white",
        linewidths=1.0,
        zorder=3,
    )
    if n <= MAX_LABELS:
        for p in people:
            text = "C" if p == coord else str(p)
            ax.annotate(text, pos[p], ha="center", va="center", fontsize=8, color="white", zorder=5)
    present = {roles.peer_role.get(p, "honest") for p in people}
    if roles.eavesdroppers:
        present.add("eavesdropper")
    for r in ROLE_COLOURS:
        if r in present:
            marker = "D" if r == "eavesdropper" else "o"
            handles.append(
                Line2D(
                    [],
                    [],
                    marker=marker,
                    linestyle="",
                    color=ROLE_COLOURS[r],
                    markersize=9,
                    label=r,
                )
            )
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    ax.autoscale_view()
    ax.margins(0.12)
    title = str(run.summary.get("topology") or run.config.get("topology", {}).get("kind", ""))
    if isinstance(topo, str):
        title += f"\n(not rebuilt from config.yaml: {topo[:80]})"
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _topology(run: RunData) -> Any:
    """The run's topology at step 0, rebuilt from its resolved config exactly as the run
    built it, or the reason it cannot be (a string; the drawing then shows the links that
    carried frames, on a circle)."""
    from p2pfed.experiment import topology_seed
    from p2pfed.topology import build_schedule

    if run.cfg is None:
        return "config.yaml does not validate"
    try:
        return build_schedule(run.cfg.topology, seed=topology_seed(run.cfg.seed)).at(0)
    except P2PFedError as exc:
        return f"{type(exc).__name__}: {exc}"


def _layout(run: RunData, topo: Any) -> dict[int, np.ndarray]:
    if not isinstance(topo, str):
        from p2pfed.topology.show import layout

        return {int(k): np.asarray(v, dtype=float) for k, v in layout(topo).items()}
    angles = 2 * math.pi * np.arange(run.n) / max(run.n, 1)
    return {p: np.array([math.cos(a), math.sin(a)]) for p, a in enumerate(angles)}


def _span(pos: Mapping[int, np.ndarray]) -> float:
    pts = np.array(list(pos.values())) if pos else np.zeros((1, 2))
    return float(max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]), 1e-9))


def _total(e: Mapping[str, int]) -> int:
    return int(e["payload_bytes"] + e["metadata_bytes"] + e["crypto_bytes"])


def plot_edge_bytes(run: RunData) -> str | None:
    """Bytes per directed edge, one heatmap per kind (payload, crypto, metadata), each on
    its own scale; above 128 participants a histogram of per-edge bytes by kind instead."""
    from matplotlib.colors import LogNorm, Normalize

    if not run.edges:
        return None
    kinds = [
        ("payload", "payload_bytes"),
        ("crypto", "crypto_bytes"),
        ("metadata", "metadata_bytes"),
    ]
    size = max(max(e["src"], e["dst"]) for e in run.edges) + 1
    if size > MAX_HEATMAP:
        fig = _figure(8.0, 3.4)
        ax = fig.add_subplot(1, 1, 1)
        for name, col in kinds:
            vals = np.array([e[col] for e in run.edges if e[col] > 0], dtype=float)
            if len(vals):
                ax.hist(vals, bins=40, alpha=0.6, label=name)
        ax.set_xlabel("bytes on one directed edge")
        ax.set_ylabel("edges")
        ax.legend(fontsize=8)
        return _png(fig)
    mats = {name: np.zeros((size, size)) for name, _ in kinds}
    for e in run.edges:
        for name, col in kinds:
            mats[name][e["src"], e["dst"]] += e[col]
    if not any((m > 0).any() for m in mats.values()):
        return None
    fig = _figure(13.0, 4.0)
    axes = fig.subplots(1, 3)
    coord = run.n if run.has_coordinator else None
    for ax, (name, _) in zip(axes, kinds, strict=True):
        m = mats[name]
        ax.set_title(f"{name}: {_fmt_bytes(m.sum())} in all", fontsize=10)
        ax.set_xlabel("to")
        _ticks(ax, size, coord)
        if not (m > 0).any():
            ax.imshow(np.zeros_like(m), cmap="Greys", vmin=0, vmax=1)
            ax.text(size / 2 - 0.5, size / 2 - 0.5, f"no {name} bytes", ha="center", va="center")
            continue
        lo, hi = float(m[m > 0].min()), float(m.max())
        # one colour scale per kind: crypto and metadata are often 1000x below payload and
        # would be one flat colour on a shared scale; log once the spread is wide
        norm = LogNorm(vmin=lo, vmax=hi) if hi > 20 * lo else Normalize(vmin=0, vmax=hi)
        image = ax.imshow(
            np.ma.masked_less_equal(m, 0), norm=norm, cmap="viridis", interpolation="nearest"
        )
        fig.colorbar(image, ax=ax, shrink=0.8, label="bytes" if ax is axes[2] else None)
    axes[0].set_ylabel("from")
    return _png(fig)


def _ticks(ax: Any, size: int, coord: int | None) -> None:
    step = max(1, size // 16)
    ticks = list(range(0, size, step))
    labels = ["C" if t == coord else str(t) for t in ticks]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)


def plot_labels(run: RunData) -> str | None:
    """Each peer's share of each class in its training shard: how non-IID the split is."""
    if not run.labels or not run.labels.get("peers"):
        return None
    peers = sorted(run.labels["peers"], key=int)
    counts = np.array([run.labels["peers"][p] for p in peers], dtype=float)
    fig = _figure(8.0, min(6.0, 1.5 + 0.18 * len(peers)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, aspect="auto", cmap="Blues", interpolation="nearest")
    ax.set_xlabel("class")
    ax.set_ylabel("peer")
    step = max(1, len(peers) // 16)
    ax.set_yticks(range(0, len(peers), step), [peers[i] for i in range(0, len(peers), step)])
    fig.colorbar(image, ax=ax, label="training samples")
    return _png(fig)


def plot_final_accuracy(run: RunData) -> str | None:
    """Each peer's last evaluated accuracy, coloured by role."""
    last: dict[int, float] = {}
    for r in run.metrics:
        if r.get("test_acc") is not None:
            last[int(r["peer"])] = float(r["test_acc"])
    if not last:
        return None
    roles = roles_of(run, []).peer_role
    peers = sorted(last)
    fig = _figure(8.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(
        range(len(peers)),
        [last[p] for p in peers],
        color=[ROLE_COLOURS[roles.get(p, "honest")] for p in peers],
    )
    step = max(1, len(peers) // 32)
    ax.set_xticks(range(0, len(peers), step), [str(peers[i]) for i in range(0, len(peers), step)])
    ax.set_xlabel("peer")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    from matplotlib.patches import Patch

    present = [r for r in ROLE_COLOURS if r in {roles.get(p, "honest") for p in peers}]
    ax.legend(
        handles=[Patch(color=ROLE_COLOURS[r], label=r) for r in present],
        fontsize=8,
        loc="upper right",
    )
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_privacy(run: RunData) -> str | None:
    """ε spent by each peer at the run's δ."""
    privacy = run.summary.get("privacy") or {}
    eps = privacy.get("epsilon")
    if not privacy.get("dp") or not eps:
        return None
    fig = _figure(8.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(eps)), [e if e is not None else np.nan for e in eps], color="#9c89b8")
    ax.set_xlabel("peer")
    ax.set_ylabel(f"ε at δ = {privacy.get('delta')}")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_availability(run: RunData) -> str | None:
    """Who was down when: one bar per down spell."""
    if not run.spells:
        return None
    fig = _figure(8.0, min(6.0, 1.5 + 0.15 * run.n))
    ax = fig.add_subplot(1, 1, 1)
    colours = {"crash": "#C44E52", "leave": "#DD8452"}
    ends = [s["up"] for s in run.spells if math.isfinite(s["up"])] + [s["down"] for s in run.spells]
    end = float(run.summary.get("virtual_time") or max(ends))
    for s in run.spells:
        up = min(s["up"], end) if math.isfinite(s["up"]) else end
        ax.barh(s["peer"], up - s["down"], left=s["down"], color=colours.get(s["how"], "0.5"))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=h) for h, c in colours.items()], fontsize=8)
    ax.set_xlabel(run.time_label)
    ax.set_ylabel("peer")
    ax.set_xlim(0, end)
    return _png(fig)


# --- HTML ----------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.45}
header{background:#1f2d3d;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3dd;font-size:14px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 28px;
z-index:2;font-size:14px}nav a{margin-right:14px;color:#1f5f99;text-decoration:none}
main{padding:8px 28px 40px;max-width:1300px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:16px 0;
padding:6px 18px 14px}
h2{font-size:18px;margin:10px 0}
figure{margin:8px 0}figure img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;cursor:pointer;user-select:none}td.num{text-align:right;
font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:120px;background:#fcfcfc}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#666}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 12px;margin:8px 0}
.fail{background:#fdecea;border-left:4px solid #c0392b;padding:6px 12px;margin:8px 0}
.note{color:#666;font-size:14px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{flex:1 1 420px}
.wide{overflow-x:auto;max-width:100%}
"""

# Click a header to sort its table (numbers numerically); the only script in a report.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.dataset.order !== "asc";
    rows.sort(function (a, b) {
      var x = a.cells[th.cellIndex].dataset.value || a.cells[th.cellIndex].textContent;
      var y = b.cells[th.cellIndex].dataset.value || b.cells[th.cellIndex].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    th.dataset.order = asc ? "asc" : "desc";
  });
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{sid}">{_e(head)}</a>' for sid, head, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_e(head)}</h2>{content}</section>'
        for sid, head, content in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main><script>{_SCRIPT}</script></body></html>\n"
    )


def _img(plot_id: str, png: str | None, caption: str, missing: str) -> str:
    if png is None:
        return f'<p class="note" data-empty="{plot_id}">{_e(missing)}</p>'
    return (
        f'<figure class="plot" data-plot="{plot_id}"><img alt="{_e(caption)}" '
        f'src="data:image/png;base64,{png}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _table(
    table_id: str, header: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True
) -> str:
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return (
        f'<div class="wide"><table id="table-{table_id}"{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return f"<td>{'—' if v is None else _e(v)}</td>"
    if isinstance(v, int | float):
        return f'<td class="num" data-value="{v}">{_e(_fmt(v))}</td>'
    return f"<td>{_e(v)}</td>"


def _fmt(v: float | int) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:.3e}"


def _fmt_bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def _kv_table(table_id: str, items: Mapping[str, Any]) -> str:
    rows = [
        (k, v if isinstance(v, int | float | str | bool) or v is None else json.dumps(v))
        for k, v in items.items()
    ]
    return _table(table_id, ["key", "value"], rows, sortable=False)


def headline(run: RunData) -> dict[str, Any]:
    """One row of figures that sums a run up (the comparison table's row)."""
    s = run.summary
    figures = headline_figures(s)
    final = s.get("final") or {}
    b = s.get("bytes") or {}
    msgs = s.get("messages") or {}
    privacy = s.get("privacy") or {}
    robust = s.get("robustness") or {}
    rounds = s.get("rounds_completed") or []
    return {
        "run": run.name,
        "status": s.get("status", "?"),
        "protocol": run.cfg.protocol.kind if run.cfg else None,
        "protection": run.protection,
        "peers": run.n,
        "time": "wall" if run.wall else "virtual",
        "mean acc": figures["mean_acc"],
        "min acc": figures["min_acc"],
        "honest mean acc": robust.get("honest_mean_acc"),
        "consensus dist": final.get("mean_consensus_dist"),
        "rounds (mean)": float(np.mean(rounds)) if rounds else None,
        "messages": msgs.get("sent"),
        "MB": figures["bytes_total"] / 1e6 if figures["bytes_total"] is not None else None,
        "crypto MB": b.get("crypto", 0) / 1e6 if b else None,
        "ε max": privacy.get("epsilon_max") if privacy.get("dp") else None,
        "run clock s": figures["virtual_time"],
        "wall s": figures["wall_time_s"],
    }


def _summary_section(run: RunData) -> str:
    s = run.summary
    h = headline(run)
    cards = [
        ("status", h["status"]),
        ("mean accuracy", _opt(h["mean acc"], "{:.3f}")),
        ("worst peer", _opt(h["min acc"], "{:.3f}")),
        ("peers", h["peers"]),
        ("protocol", h["protocol"]),
        ("protection", h["protection"]),
        ("traffic", _fmt_bytes((s.get("bytes") or {}).get("total", 0))),
        (
            "run clock at the end (wall)" if run.wall else "virtual time",
            _opt(s.get("virtual_time"), "{:.2f} s"),
        ),
        ("wall time in all", _opt(s.get("wall_time_s"), "{:.1f} s")),
    ]
    out = (
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in cards)
        + "</div>"
    )
    out += _status_note(s)
    for w in s.get("warnings") or []:
        out += f'<div class="warn">{_e(w)}</div>'
    if run.missing:
        out += f'<p class="note">not in the run directory: {_e(", ".join(run.missing))}</p>'
    facts = {
        "run directory": str(run.run_dir),
        "topology": s.get("topology"),
        "spectral gap": s.get("spectral_gap"),
        "model parameters": s.get("params"),
        "runtime": s.get("runtime"),
        "time mode": s.get("time_mode"),
        "seed": run.config.get("seed"),
    }
    return out + _kv_table("summary", {k: v for k, v in facts.items() if v is not None})


def _status_note(s: Mapping[str, Any]) -> str:
    """A box for a run that did not simply complete: what happened to it."""
    status = s.get("status")
    if status == "completed":
        return ""
    if status == "time_limit":
        return '<div class="warn">the run stopped at its time limit (time.limit)</div>'
    if status == "analysing":
        return (
            '<div class="warn">the run finished, but its attack analysis did not (killed while '
            "analysing?): <code>p2pfed run --resume</code> goes on from its last checkpoint</div>"
        )
    if status == "failed":
        err = s.get("attacks_error") and f"attack analysis: {s['attacks_error']}"
        err = err or s.get("error") or ""
        where = (s.get("failed_at") or {}).get("where", "")
        return f'<div class="fail">the run failed: {_e(err)} {_e(where)}</div>'
    return f'<div class="warn">run status: {_e(status)}</div>'


def _opt(v: Any, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


_ATTACK_IMAGE = re.compile(r"attack-[A-Za-z0-9_.,=+-]+\.png")


def _attacks_section(run: RunData) -> str:
    failed = run.summary.get("attacks_error")
    failure = f'<div class="fail">the attack analysis failed: {_e(failed)}</div>' if failed else ""
    if not run.attacks:
        watching = run.cfg is not None and bool(run.cfg.observers)
        why = "no attack results" if watching else "no observing adversary in this run"
        return f'{failure}<p class="note" data-empty="attacks">{_e(why)}.</p>'
    rows = []
    for a in run.attacks:
        m = a.get("metrics") or {}
        rows.append(
            (
                a.get("adversary"),
                a.get("attack"),
                a.get("target"),
                a.get("view", ""),
                a.get("protection"),
                m.get("psnr_median"),
                m.get("auc"),
                m.get("tpr_at_1pct_fpr"),
                m.get("label_accuracy", m.get("judge_accuracy")),
                a.get("error") or attack_line(a).split(": ", 2)[-1],
            )
        )
    out = failure + _table(
        "attacks",
        [
            "adversary",
            "attack",
            "target",
            "view",
            "protection",
            "PSNR dB",
            "AUC",
            "TPR@1%FPR",
            "label / judge acc",
            "headline",
        ],
        rows,
    )
    models = {a.get("adversary"): a.get("threat_model") for a in run.attacks}
    out += (
        '<p class="note">Threat models: '
        + "; ".join(f"<b>{_e(k)}</b>: {_e(v)}" for k, v in models.items() if v)
        + "</p>"
    )
    images = [a["image"] for a in run.attacks if a.get("image")]
    figs = []
    for name in dict.fromkeys(images):
        path = run.run_dir / str(name)
        if not _ATTACK_IMAGE.fullmatch(str(name)):  # only the grids a run writes, nothing else
            figs.append(f'<p class="note">{_e(name)} is not an attack image name: not shown</p>')
        elif path.exists():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            figs.append(_img(Path(name).stem, data, f"{name}: originals and reconstructions", ""))
        else:
            figs.append(f'<p class="note">{_e(name)} is missing from the run directory</p>')
    if figs:
        out += '<div class="grid">' + "".join(figs) + "</div>"
    return out


def _robustness_section(run: RunData) -> str:
    robust = run.summary.get("robustness")
    out = ""
    if robust:
        out += _kv_table("robustness", robust)
    else:
        out += '<p class="note">no poisoner, on-path attacker or robust rule in this run.</p>'
    out += _img(
        "final-accuracy",
        plot_final_accuracy(run),
        "final test accuracy of every peer, coloured by role",
        "no accuracy was evaluated",
    )
    events = run.summary.get("protocol_events") or {}
    if events:
        out += "<h3>protocol events</h3>" + _table(
            "protocol-events", ["event", "count"], sorted(events.items())
        )
    rejected = run.summary.get("frames_rejected_by_reason") or {}
    if rejected:
        out += "<h3>rejected frames</h3>" + _table(
            "rejected", ["reason", "frames"], sorted(rejected.items())
        )
    return out


def _privacy_section(run: RunData) -> str:
    privacy = run.summary.get("privacy") or {}
    png = plot_privacy(run)
    if png is None:
        return (
            '<p class="note" data-empty="privacy">no differential privacy in this run: no peer '
            f"has a formal privacy budget (protection: {_e(run.protection)}).</p>"
        )
    facts = {k: v for k, v in privacy.items() if k not in ("epsilon", "releases", "steps")}
    return _img("privacy", png, "ε spent by each peer", "") + _kv_table("privacy", facts)


_TIMING_NAMES = {
    "build_s": "building the experiment (s)",
    "start_s": "starting the runtime (s)",
    "run_s": "running (s)",
    "attacks_s": "attack analysis (s)",
}


def _timings_section(run: RunData) -> str:
    s = run.summary
    timings = s.get("timings") or {}
    items: dict[str, Any] = {_TIMING_NAMES.get(k, k): v for k, v in timings.items()}
    items["wall time in all (s)"] = s.get("wall_time_s")
    clock = "run clock at the end, wall (s)" if run.wall else "virtual time (s)"
    items[clock] = s.get("virtual_time")
    events = s.get("events")
    items["engine events"] = events
    run_s = timings.get("run_s")
    if events and run_s:
        items["events per wall second"] = round(events / run_s, 1)
    for k, v in (s.get("messages") or {}).items():
        items[f"messages {k}"] = v
    for k, v in (s.get("bytes") or {}).items():
        items[f"bytes {k}"] = v
    out = _kv_table("timings", {k: v for k, v in items.items() if v is not None})
    hosts = s.get("hosts")
    if hosts:
        first = ["host", "peers", "node", "device", "param_device", "gpu_ids", "alive"]
        seen = {k for h in hosts for k in h}
        cols = [c for c in first if c in seen] + sorted(seen - set(first))
        out += "<h3>Ray hosts</h3>" + _table(
            "hosts", cols, [[_plain(h.get(c)) for c in cols] for h in hosts]
        )
        failures = s.get("host_failures") or []
        if failures:
            cols = sorted({k for f in failures for k in f})
            out += f"<h3>host failures ({len(failures)})</h3>" + _table(
                "host-failures", cols, [[_plain(f.get(c)) for c in cols] for f in failures]
            )
        else:
            out += '<p class="note">no host failed.</p>'
    return out


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, int | float | str | bool) else json.dumps(v)


def _all_zero(run: RunData, key: str) -> bool:
    values = run.series(key)[1]
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and not finite.any()


def render_run(run: RunData) -> str:
    """The HTML of one run's report."""
    s = run.summary
    acc = plot_over_time(run, "test_acc", "test accuracy")
    cons = plot_over_time(run, "consensus_dist", "distance to the mean model", log=True)
    sections = [
        ("summary", "Summary", _summary_section(run)),
        (
            "accuracy",
            "Accuracy over time",
            _img(
                "accuracy",
                acc,
                "test accuracy of every peer (thin, coloured by role), the mean over peers "
                "and the 10–90 % spread",
                "no evaluation was logged (metrics.jsonl is empty)",
            ),
        ),
        (
            "consensus",
            "Consensus distance",
            _img(
                "consensus",
                cons,
                "each peer's L2 distance to the mean of all models: how far the peers are "
                "from agreeing",
                "every peer held the same model at every evaluation (distance 0 throughout)"
                if _all_zero(run, "consensus_dist")
                else "no consensus distance was logged",
            ),
        ),
        (
            "topology",
            "Topology and traffic",
            _img(
                "topology",
                plot_topology(run),
                "peers coloured by role; edges coloured by protection mode, width by bytes "
                "carried (both directions)",
                "",
            ),
        ),
        (
            "bytes",
            "Bytes per edge",
            _img(
                "edge-bytes",
                plot_edge_bytes(run),
                "bytes sent on each directed edge (row: sender, column: receiver; C: the "
                "coordinator). Payload: the arrays a frame carries (models, masked vectors, "
                "shares, ciphertexts); metadata: the rest of the encoded frame; crypto: what "
                "sealing the link added (security.channel aead)",
                "no frames were sent",
            )
            + _edge_table(run),
        ),
        (
            "data",
            "Data split",
            _img(
                "labels",
                plot_labels(run),
                "training samples of each class held by each peer",
                "label_histograms.json is missing",
            ),
        ),
        ("attacks", "Attacks", _attacks_section(run)),
        ("privacy", "Privacy budget", _privacy_section(run)),
        ("robustness", "Robustness", _robustness_section(run)),
    ]
    avail = plot_availability(run)
    if avail is not None or s.get("availability"):
        sections.append(
            (
                "availability",
                "Availability",
                _img("availability", avail, "down spells of every peer", "no peer went down")
                + _kv_table("availability", s.get("availability") or {}),
            )
        )
    sections += [
        ("timings", "Timings", _timings_section(run)),
        (
            "config",
            "Resolved config",
            f"<details><summary>config.yaml</summary><pre>{_e(run.config_text)}</pre></details>",
        ),
    ]
    subtitle = (
        f"{s.get('status', '?')} · {run.n} peers · {run.config.get('protocol', {}).get('kind')}"
        f" · {run.protection} · {s.get('topology') or ''}"
    )
    return _page(f"p2pfed run {run.name}", subtitle, sections)


def _edge_table(run: RunData) -> str:
    if not run.edges:
        return ""
    top = sorted(run.edges, key=_total, reverse=True)[:10]
    rows = [
        (
            e["src"],
            e["dst"],
            e["frames"],
            e["lost"],
            e["payload_bytes"],
            e["crypto_bytes"],
            e["metadata_bytes"],
        )
        for e in top
    ]
    return "<h3>busiest edges</h3>" + _table(
        "edges", ["from", "to", "frames", "lost", "payload B", "crypto B", "metadata B"], rows
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of one run (default ``RUN_DIR/report.html``); returns its path."""
    run = load_run(run_dir)
    path = Path(out) if out is not None else run.run_dir / REPORT_FILE
    _write(path, render_run(run))
    return path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


# --- comparison ----------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": value}`` (lists kept whole)."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(runs: Sequence[RunData]) -> list[tuple[str, list[Any]]]:
    """Every resolved config key whose value is not the same in all runs."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    out = []
    for k in keys:
        vals = [f.get(k, "(absent)") for f in flat]
        if any(json.dumps(v, sort_keys=True) != json.dumps(vals[0], sort_keys=True) for v in vals):
            out.append((k, vals))
    return out


def _compare_over_time(runs: Sequence[RunData], key: str, ylabel: str, log: bool) -> str | None:
    fig = _figure(8.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for k, run in enumerate(runs):
        times, values, _ = run.series(key)
        if log:
            values = np.where(values > 0, values, np.nan)
        colour, style = _run_style(k)
        label = _mpl_text(run.name + (" (wall time)" if run.wall else ""))
        drawn |= _band(ax, times, values, colour, label, band_label=None, linestyle=style)
    if not drawn:
        return None
    if log:
        ax.set_yscale("log")
    clocks = {run.wall for run in runs}
    ax.set_xlabel(
        "time (s): virtual, or wall where marked" if len(clocks) > 1 else runs[0].time_label
    )
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=1 + len(runs) // 12)
    return _png(fig)


def _run_style(k: int) -> tuple[str, str]:
    """A colour and line style per run: 10 distinct colours, solid, then dashed, dotted,
    dash-dotted."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    colour = to_hex(colormaps["tab10"](k % 10))
    return colour, ["-", "--", ":", "-."][(k // 10) % 4]


def _mpl_text(text: str) -> str:
    """Text matplotlib shows as written: no math mode, and a legend label starting with
    ``_`` is not skipped."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def _compare_bytes(runs: Sequence[RunData]) -> str:
    fig = _figure(8.0, 0.9 + 0.45 * len(runs))
    ax = fig.add_subplot(1, 1, 1)
    left = np.zeros(len(runs))
    for kind, colour in (("payload", "#4C72B0"), ("crypto", "#C44E52"), ("metadata", "#8c8c8c")):
        vals = np.array([(r.summary.get("bytes") or {}).get(kind, 0) / 1e6 for r in runs])
        ax.barh(range(len(runs)), vals, left=left, color=colour, label=kind)
        left += vals
    ax.set_yticks(range(len(runs)), [_mpl_text(r.name) for r in runs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("MB sent")
    ax.legend(fontsize=8)
    return _png(fig)


def _compare_final(runs: Sequence[RunData]) -> str | None:
    data, names = [], []
    for run in runs:
        last = run.last_accuracy()
        if last:
            data.append(list(last.values()))
            names.append(_mpl_text(run.name))
    if not data:
        return None
    fig = _figure(8.0, 0.9 + 0.45 * len(data))
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(data, orientation="horizontal", tick_labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("final test accuracy of a peer")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def render_comparison(runs: Sequence[RunData], links: Sequence[str | None] = ()) -> str:
    """The HTML putting ``runs`` side by side; ``links`` are hrefs of each run's report."""
    heads = [headline(r) for r in runs]
    cols = list(heads[0])
    rows = []
    for h in heads:
        rows.append([h[c] for c in cols])
    table = _table("runs", cols, rows)
    if any(links):
        table += (
            "<p>reports: "
            + " · ".join(
                f'<a href="{_e(href)}">{_e(r.name)}</a>'
                for r, href in zip(runs, links, strict=True)
                if href
            )
            + "</p>"
        )
    diffs = config_differences(runs)
    if diffs:
        diff_html = _table(
            "config-diff",
            ["key", *[r.name for r in runs]],
            [(k, *[_short(v) for v in vals]) for k, vals in diffs],
        )
    else:
        diff_html = '<p class="note">the resolved configs are the same.</p>'
    if len(runs) > MAX_SIDE_BY_SIDE:
        many = (
            f'<p class="note">{len(runs)} runs: each run\'s own plots are in its report '
            "(linked under the table above).</p>"
        )
        small = topo = many
    else:
        small = "".join(
            _img(
                f"accuracy-{k}",
                plot_over_time(run, "test_acc", "test accuracy", title=_mpl_text(run.name)),
                f"{run.name}: every peer's accuracy",
                f"{run.name}: no evaluation logged",
            )
            for k, run in enumerate(runs)
        )
        topo = "".join(
            _img(f"topology-{k}", plot_topology(run), f"{run.name}: topology and traffic", "")
            for k, run in enumerate(runs)
        )
    sections = [
        ("runs", "Runs", table),
        ("differences", "Config differences", diff_html),
        (
            "accuracy",
            "Accuracy over time",
            _img(
                "accuracy",
                _compare_over_time(runs, "test_acc", "test accuracy", False),
                "mean test accuracy over peers of each run and its 10–90 % spread",
                "no run logged an evaluation",
            )
            + _img(
                "final-accuracy",
                _compare_final(runs),
                "final accuracy of the peers of each run",
                "no run logged an evaluation",
            ),
        ),
        (
            "consensus",
            "Consensus distance",
            _img(
                "consensus",
                _compare_over_time(runs, "consensus_dist", "distance to the mean model", True),
                "mean consensus distance of each run",
                "no run logged it",
            ),
        ),
        (
            "bytes",
            "Traffic",
            _img("bytes", _compare_bytes(runs), "bytes sent by each run, by kind", ""),
        ),
        ("side-by-side", "Each run", f'<div class="grid">{small}</div>'),
        ("topologies", "Topologies", f'<div class="grid">{topo}</div>'),
    ]
    return _page(
        f"p2pfed comparison of {len(runs)} runs", ", ".join(r.name for r in runs), sections
    )


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the comparison of ``run_dirs`` to ``out``; returns its path."""
    if not run_dirs:
        raise ReportError("nothing to compare: give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for r in runs:  # two runs of one name (the same name in two sweeps) stay apart
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} ({seen[r.name]})"
    path = Path(out)
    links: list[str | None] = []
    for r in runs:
        report = r.run_dir / REPORT_FILE
        if report.exists():
            try:  # relative, so a sweep directory can move as a whole
                rel = Path(os.path.relpath(report.resolve(), path.resolve().parent)).as_posix()
                links.append(urllib.parse.quote(rel))
            except ValueError:  # another drive
                links.append(report.resolve().as_uri())
        else:
            links.append(None)
    _write(path, render_comparison(runs, links))
    return path
