"""The run directory: everything a run leaves behind, written as it happens.

::

    RUN_DIR/
      config.yaml            the resolved experiment (topology file inlined)
      events.jsonl           structlog JSON event log (run_id, peer, t bound on each line)
      metrics.jsonl          one line per peer per evaluation tick
      edges.csv              per directed edge: frames, lost, payload / metadata / crypto bytes
      label_histograms.json  per-peer label counts of the training shards
      summary.json           final accuracy, virtual and wall time, messages, bytes, status
      availability.csv       with churn or a trace: every down spell (peer, down, up, how)
      checkpoint.pt          the latest checkpoint (p2pfed.checkpoint; --resume goes on from it)
      report.html            the self-contained HTML report (p2pfed.report; output.report)

Metrics are flushed at every tick, every event line as it is logged, and the edge table and
summary are written even when a run fails, so nothing measured so far is lost; a resumed run
cuts both logs back to their length at its checkpoint and writes on. The event log never
carries parameters, shares, keys or samples — only ids, counts, sizes, times and reasons.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import structlog

from p2pfed.errors import CheckpointError
from p2pfed.protocol.codec import FrameSize
from p2pfed.runtime.base import MetricRow

_LEVELS = {"debug": 10, "info": 20, "warning": 30}

#: a run whose summary says one of these has finished (``resume`` refuses it, a sweep skips
#: it); ``analysing``: the run is done and its attacks are being analysed
FINISHED = ("completed", "time_limit")
#: the columns of ``edges.csv``
EDGE_COLUMNS = (
    "src",
    "dst",
    "frames",
    "lost",
    "payload_bytes",
    "metadata_bytes",
    "crypto_bytes",
)


class RunRecorder:
    """Implements :class:`~p2pfed.runtime.base.RunObserver` by writing the run directory."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        log_level: str = "info",
        resume: dict[str, Any] | None = None,
    ):
        """``resume`` (a :meth:`checkpoint_state`) reopens the logs of an interrupted run,
        cut back to where the checkpoint was taken, and restores the counters."""
        self.run_dir = run_dir
        self.run_id = run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        self._events: TextIO = _open_log(run_dir / "events.jsonl", resume, "events_at")
        try:
            self._metrics: TextIO = _open_log(run_dir / "metrics.jsonl", resume, "metrics_at")
        except OSError:
            self._events.close()
            raise
        self.log: Any = structlog.wrap_logger(
            structlog.WriteLogger(self._events),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="wall"),
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[log_level]),
        ).bind(run_id=run_id)
        # (src, dst) -> [frames delivered to the wire, lost, payload, metadata, crypto bytes]
        self.edges: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        self.last_rows: list[MetricRow] = []
        self.progress_hook: Any = None
        self.rejected = 0
        self.rejected_by_reason: dict[str, int] = {}
        if resume is not None:
            self.edges.update({tuple(k): list(v) for k, v in resume["edges"]})
            self.last_rows = list(resume["last_rows"])
            self.rejected = int(resume["rejected"])
            self.rejected_by_reason = dict(resume["rejected_by_reason"])

    def checkpoint_state(self) -> dict[str, Any]:
        """The counters, and how far each log has been written (flushed first)."""
        self._events.flush()
        self._metrics.flush()
        return {
            "events_at": self._events.tell(),
            "metrics_at": self._metrics.tell(),
            "edges": [(k, list(v)) for k, v in self.edges.items()],
            "last_rows": list(self.last_rows),
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
        }

    # --- RunObserver ------------------------------------------------------------------------

    def frame_sent(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        e = self.edges[(src, dst)]
        e[0] += 1
        e[2] += size.payload
        e[3] += size.metadata
        e[4] += size.crypto
        self.log.debug("update_sent", t=t, peer=src, to=dst, type=kind, bytes=size.total)

    def frame_lost(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        e = self.edges[(src, dst)]
        e[0] += 1
        e[1] += 1
        e[2] += size.payload
        e[3] += size.metadata
        e[4] += size.crypto
        self.log.info("frame_lost", t=t, peer=src, to=dst, type=kind, bytes=size.total)

    def frame_rejected(self, t: float, src: int, dst: int, reason: str) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        self.log.warning("frame_rejected", t=t, peer=dst, sender=src, reason=reason)

    def peer_event(self, t: float, peer: int, name: str, fields: dict[str, Any]) -> None:
        self.log.info(name, t=t, peer=peer, **fields)

    def evaluated(self, rows: list[MetricRow]) -> None:
        # one write per tick, flushed: a process killed now leaves whole ticks behind
        lines = [json.dumps(finite(_row_dict(row)), allow_nan=False) + "\n" for row in rows]
        self._metrics.write("".join(lines))
        self._metrics.flush()
        self.last_rows = rows
        accs = [r.test_acc for r in rows]
        self.log.info(
            "evaluated",
            t=rows[0].t,
            tick=rows[0].tick,
            mean_acc=round(float(np.mean(accs)), 6),
            min_acc=round(min(accs), 6),
        )

    def progress(self, t: float, completed: int, total: int) -> None:
        if self.progress_hook is not None:
            self.progress_hook(t, completed, total)

    # --- files written once ---------------------------------------------------------------

    def write_config(self, yaml_text: str, header: str = "") -> None:
        (self.run_dir / "config.yaml").write_text(header + yaml_text)

    def write_label_histograms(self, histograms: np.ndarray) -> None:
        data = {
            "num_classes": int(histograms.shape[1]),
            "peers": {str(i): [int(c) for c in row] for i, row in enumerate(histograms)},
        }
        (self.run_dir / "label_histograms.json").write_text(json.dumps(data, indent=1) + "\n")

    def write_edges(self) -> None:
        with (self.run_dir / "edges.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(EDGE_COLUMNS)
            for (src, dst), counts in sorted(self.edges.items()):
                w.writerow([src, dst, *counts])

    def byte_totals(self) -> dict[str, int]:
        payload, meta, crypto = (sum(e[k] for e in self.edges.values()) for k in (2, 3, 4))
        return {
            "payload": payload,
            "metadata": meta,
            "crypto": crypto,
            "total": payload + meta + crypto,
        }

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(finite(summary), indent=2, allow_nan=False, default=_json_default)
        write_atomic(self.run_dir / "summary.json", text + "\n")  # a sweep reads it to resume

    def close(self) -> None:
        self._metrics.close()
        self._events.close()


def _open_log(path: Path, resume: dict[str, Any] | None, key: str) -> TextIO:
    """A log opened for a new run (emptied), or for a resumed one: cut back to the length it
    had at the checkpoint (what an interrupted run wrote after it is written again)."""
    if resume is None:
        return path.open("w")
    f = path.open("r+")
    at = int(resume[key])
    f.seek(0, 2)
    if f.tell() < at:
        f.close()
        raise CheckpointError(f"{path.name} is shorter than at the checkpoint (cut by hand?)")
    f.truncate(at)
    f.seek(at)
    return f


def final_accuracy(rows: list[MetricRow]) -> dict[str, float]:
    """Mean/min/max test accuracy and means of loss and consensus distance over peers."""
    accs = np.array([r.test_acc for r in rows])
    return {
        "mean_acc": float(accs.mean()),
        "min_acc": float(accs.min()),
        "max_acc": float(accs.max()),
        "mean_test_loss": float(np.mean([r.test_loss for r in rows])),
        "mean_consensus_dist": float(np.mean([r.consensus_dist for r in rows])),
    }


def read_metrics(run_dir: str | Path, cut: list[int] | None = None) -> list[dict[str, Any]]:
    """Load metrics.jsonl of a run directory. With ``cut`` (a list), lines that do not parse
    (cut short by a kill) are skipped and their line numbers appended to it; without, they
    raise."""
    rows = []
    with (Path(run_dir) / "metrics.jsonl").open() as f:
        for k, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if cut is None:
                    raise
                cut.append(k)
    return rows


def read_edges(run_dir: str | Path, cut: list[int] | None = None) -> list[dict[str, int]]:
    """Load edges.csv of a run directory, one dict of integer counts per directed edge;
    ``cut`` as for :func:`read_metrics`."""
    rows = []
    with (Path(run_dir) / "edges.csv").open(newline="") as f:
        for k, row in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append({c: int(row[c]) for c in EDGE_COLUMNS})
            except (KeyError, TypeError, ValueError):
                if cut is None:
                    raise
                cut.append(k)
    return rows


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or ``None`` when it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's ``summary.json``, or ``None`` when it has none (yet)."""
    data = read_json(Path(run_dir) / "summary.json")
    return data if isinstance(data, dict) else None


def write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a temporary file beside ``path``, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def headline_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's figures at a glance, from its summary: final mean and worst accuracy, bytes
    sent, virtual and wall time (``None`` where the run got no figure)."""
    final = summary.get("final") or {}
    return {
        "mean_acc": final.get("mean_acc"),
        "min_acc": final.get("min_acc"),
        "bytes_total": (summary.get("bytes") or {}).get("total"),
        "virtual_time": summary.get("virtual_time"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def attack_line(row: dict[str, Any]) -> str:
    """One line of an attack row: who, which attack on what, and its headline numbers."""
    m = row.get("metrics", {})
    if "psnr_median" in m:
        head = f"PSNR {m['psnr_median']:.1f} dB (prior {_db(m.get('baseline_mse'))})"
        if "label_accuracy" in m:
            head += f", labels {m['label_accuracy']:.0%}"
    elif "auc" in m:
        head = f"AUC {m['auc']:.3f}, TPR@1%FPR {m['tpr_at_1pct_fpr']:.3f}"
    elif "judge_accuracy" in m:
        head = f"{m['judge_accuracy']:.0%} of classes recognised by an independent model"
    else:
        head = row.get("note", "nothing observed to attack")
    view = f" [{row['view']}]" if row.get("view") else ""
    return f"{row['adversary']}: {row['attack']} on {row['target']}{view}: {head}"


def _db(mse: float | None) -> str:
    if mse is None or mse <= 0:
        return "n/a"
    return f"{10 * math.log10(1 / mse):.1f} dB"


def _row_dict(row: MetricRow) -> dict[str, Any]:
    return {
        "tick": row.tick,
        "t": round(row.t, 9),
        "peer": row.peer,
        "round": row.round,
        "train_loss": row.train_loss,
        "test_acc": row.test_acc,
        "test_loss": row.test_loss,
        "consensus_dist": row.consensus_dist,
    }


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN; a
    diverged run must still leave valid metrics and a summary)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
