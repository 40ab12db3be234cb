"""HTML reports of runs and comparisons (p2pfed.report), read as files and in a real browser."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed.cli import main
from p2pfed.experiment import run
from p2pfed.report import (
    ReportError,
    config_differences,
    load_run,
    roles_of,
    write_comparison,
    write_report,
)
from tests.browser import render, requires_chromium
from tests.conftest import small_config

pytestmark = pytest.mark.report  # these runs draw their reports

RUN_SECTIONS = (
    "summary",
    "accuracy",
    "consensus",
    "topology",
    "bytes",
    "data",
    "attacks",
    "privacy",
    "robustness",
    "timings",
    "config",
)


def _watched() -> dict[str, Any]:
    """D-PSGD on a ring with DP, an eavesdropper, a curious peer and a sign-flipper."""
    cfg = small_config(
        topology={"kind": "ring", "n": 6},
        dp={"clip": 1.0, "noise_multiplier": 0.5},
        protocol={"kind": "dpsgd", "rounds": 4, "robust": {"rule": "trimmed_mean", "f": 1}},
        output={"progress": "off", "report": True},
    )
    cfg["adversaries"] = [
        {"role": "eavesdropper", "target": 2},
        {"role": "curious_peer", "peer": 4},
        {"role": "poisoner", "peers": [0], "behaviour": "sign_flip"},
    ]
    return cfg


def _coordinated() -> dict[str, Any]:
    """FedAvg under secure aggregation: a coordinator in the picture."""
    return small_config(
        protocol={"kind": "fedavg", "rounds": 3},
        security={"aggregation": "secagg"},
        output={"progress": "off", "report": True},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, cfg in (("watched", _watched()), ("coordinated", _coordinated())):
        result = run(cfg, out=base / name)
        assert result.summary["status"] == "completed"
        out[name] = base / name
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run directory's files, to alter without touching the shared runs."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _plots(text: str) -> dict[str, bytes]:
    """Every embedded plot of a report: its data-plot name and its decoded PNG bytes."""
    found = re.findall(
        r'data-plot="([^"]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', text
    )
    return {name: base64.b64decode(data) for name, data in found}


def test_run_writes_a_self_contained_report(runs: dict[str, Path]) -> None:
    text = (runs["watched"] / "report.html").read_text()
    for section in RUN_SECTIONS:
        assert f'<section id="{section}">' in text, section
    plots = _plots(text)
    for name in (
        "accuracy",
        "consensus",
        "topology",
        "edge-bytes",
        "labels",
        "privacy",
        "final-accuracy",
    ):
        assert plots[name].startswith(b"\x89PNG\r\n\x1a\n"), name
    assert any(name.startswith("attack-eavesdropper-0") for name in plots)
    # nothing is fetched: no external script, style sheet, image or font
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert '<table id="table-attacks"' in text and '<table id="table-robustness"' in text
    summary = json.loads((runs["watched"] / "summary.json").read_text())
    assert f"{summary['final']['mean_acc']:.3f}" in text
    assert "aead" not in text.split('<section id="summary">')[1].split("</section>")[0]
    assert ">dp<" in text  # the protection card names the run's protection mode


def test_report_sections_say_why_they_are_empty(runs: dict[str, Path]) -> None:
    text = (runs["coordinated"] / "report.html").read_text()
    assert 'data-empty="attacks"' in text and "no observing adversary" in text
    assert 'data-empty="privacy"' in text and "no differential privacy" in text
    summary_section = text.split('<section id="summary">')[1].split("</section>")[0]
    assert "<b>secagg</b><span>protection</span>" in summary_section
    # FedAvg peers all hold the round's model: the plot would be empty, and says why
    assert 'data-empty="consensus"' in text and "distance 0 throughout" in text


def test_roles_come_from_the_resolved_config(runs: dict[str, Path]) -> None:
    watched = load_run(runs["watched"])
    links = [(e["src"], e["dst"]) for e in watched.edges]
    roles = roles_of(watched, links)
    assert roles.peer_role[0] == "poisoner" and roles.peer_role[4] == "curious"
    assert roles.peer_role[1] == "honest" and 6 not in roles.peer_role
    [(name, tapped)] = roles.eavesdroppers
    assert name == "eavesdropper-0" and tapped == [(1, 2), (2, 3)]  # peer 2's ring links
    assert roles.protection == "dp"
    coordinated = load_run(runs["coordinated"])
    assert roles_of(coordinated, []).peer_role[6] == "coordinator"
    assert coordinated.has_coordinator and coordinated.protection == "secagg"


def test_report_of_a_killed_run_shows_what_it_wrote(runs: dict[str, Path], tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    killed.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "label_histograms.json"):
        (killed / name).write_bytes((runs["watched"] / name).read_bytes())
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"tick": 9, "t": 1.')  # a line cut short by the kill
    text = write_report(killed).read_text()
    assert "no summary.json yet" in text
    assert "metrics.jsonl line" in text and "cut short" in text
    assert "accuracy" in _plots(text)


def test_report_refuses_what_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ReportError, match="no such run directory"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(ReportError, match=r"no config\.yaml"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 1
    assert "ReportError" in capsys.readouterr().err


def test_failed_run_still_gets_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2pfed.runtime.local import LocalRuntime

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(LocalRuntime, "run", broken)
    cfg = small_config(output={"progress": "off", "report": True})
    with pytest.raises(RuntimeError, match="engine broke"):
        run(cfg, out=tmp_path / "failed")
    text = (tmp_path / "failed" / "report.html").read_text()
    assert 'class="fail"' in text and "the engine broke" in text


def test_report_off_writes_none(tmp_path: Path) -> None:
    run(small_config(), out=tmp_path / "quiet")
    assert not (tmp_path / "quiet" / "report.html").exists()


def test_compare_puts_runs_side_by_side(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp" / "comparison.html"
    assert main(["compare", str(runs["watched"]), str(runs["coordinated"]), "--out", str(out)]) == 0
    text = out.read_text()
    for section in ("runs", "differences", "accuracy", "consensus", "bytes", "side-by-side"):
        assert f'<section id="{section}">' in text, section
    plots = _plots(text)
    assert {
        "accuracy",
        "consensus",
        "bytes",
        "final-accuracy",
        "accuracy-0",
        "accuracy-1",
        "topology-0",
        "topology-1",
    } <= set(plots)
    # the reports of both runs are linked, relative to the comparison
    hrefs = re.findall(r'<a href="([^"#]+)">', text)
    assert len(hrefs) == 2 and all((out.parent / h).resolve().is_file() for h in hrefs)
    diffs = dict(config_differences([load_run(runs["watched"]), load_run(runs["coordinated"])]))
    assert diffs["protocol.kind"] == ["dpsgd", "fedavg"]
    assert diffs["security.aggregation"] == ["plain", "secagg"]
    assert "seed" not in diffs and "topology.n" not in diffs


def test_compare_refuses_nothing_to_compare(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="nothing to compare"):
        write_comparison([], tmp_path / "c.html")


@requires_chromium
def test_reports_render_in_a_browser(runs: dict[str, Path], tmp_path: Path) -> None:
    """Headless Chromium opens each report offline: no script error, nothing fetched, every
    plot decoded, every section and table there (screenshots kept in tmp_path)."""
    comparison = write_comparison(
        [runs["watched"], runs["coordinated"]], tmp_path / "comparison.html"
    )
    always = ("summary", "edges", "timings")
    pages = {
        "watched": (
            runs["watched"] / "report.html",
            RUN_SECTIONS,
            8,
            (*always, "attacks", "robustness", "privacy"),
        ),
        "coordinated": (runs["coordinated"] / "report.html", RUN_SECTIONS, 5, always),
        "comparison": (
            comparison,
            ("runs", "differences", "accuracy", "bytes"),
            8,
            ("runs", "config-diff"),
        ),
    }
    for name, (page, sections, min_plots, tables) in pages.items():
        selectors = [
            *(f"section#{s}" for s in sections),
            *(f"table#table-{t} tbody tr" for t in tables),
            "figure.plot img",
            "nav a",
        ]
        result = render(page, screenshot=tmp_path / f"{name}.png", selectors=selectors)
        assert result.problems == [], (name, result.problems)
        for s in sections:
            assert result.count(f"section#{s}") == 1, (name, s)
        for t in tables:
            assert result.count(f"table#table-{t} tbody tr") >= 1, (name, t)
        assert result.count("figure.plot img") >= min_plots, name
        assert result.count("nav a") == len(re.findall(r"<section id=", page.read_text()))
        assert result.screenshot is not None and result.screenshot.stat().st_size > 10_000


def _synthetic_run(tmp_path: Path, n: int) -> Any:
    from p2pfed.report import RunData

    rng = np.random.default_rng(0)
    metrics = [
        {
            "tick": k,
            "t": 0.5 * k,
            "peer": p,
            "test_acc": float(rng.uniform()),
            "consensus_dist": 0.1,
        }
        for k in range(5)
        for p in range(n)
    ]
    edges = [
        {
            "src": p,
            "dst": (p + 1) % n,
            "frames": 5,
            "lost": 0,
            "payload_bytes": 1000 + p,
            "metadata_bytes": 70,
            "crypto_bytes": 0,
        }
        for p in range(n)
    ]
    return RunData(
        run_dir=tmp_path,
        name="big",
        config={"topology": {"kind": "ring", "n": n}},
        config_text="",
        summary={"peers": n},
        metrics=metrics,
        edges=edges,
        attacks=[],
        labels=None,
        spells=[],
    )


def test_large_runs_draw_spreads_and_histograms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 64 peers a line per peer, above only the spread; up to 128 participants three
    heatmaps, above one histogram of per-edge bytes."""
    import p2pfed.report as report

    figures: list[Any] = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "")
    for n in (report.MAX_PEER_LINES, report.MAX_PEER_LINES + 1):
        report.plot_over_time(_synthetic_run(tmp_path, n), "test_acc", "acc")
    few, many = (len(fig.axes[0].lines) for fig in figures)
    assert few == report.MAX_PEER_LINES + 1 and many == 1  # the peers' lines, then the mean
    figures.clear()
    for n in (report.MAX_HEATMAP, report.MAX_HEATMAP + 1):
        report.plot_edge_bytes(_synthetic_run(tmp_path, n))
    heatmaps, histogram = figures
    assert sum(len(ax.images) for ax in heatmaps.axes) == 3  # one per kind, crypto empty
    assert any(t.get_text() == "no crypto bytes" for ax in heatmaps.axes for t in ax.texts)
    assert sum(len(ax.images) for ax in histogram.axes) == 0 and histogram.axes[0].patches


def test_report_reads_what_a_kill_cut_short(runs: dict[str, Path], tmp_path: Path) -> None:
    cut = _copy_run(runs["watched"], tmp_path / "cut")
    with (cut / "edges.csv").open("a") as f:
        f.write("3,4,1")  # a row cut short
    data = load_run(cut)
    assert len(data.edges) == len(load_run(runs["watched"]).edges)
    assert any("edges.csv line" in m for m in data.missing)


def test_report_embeds_only_attack_grids(runs: dict[str, Path], tmp_path: Path) -> None:
    """A crafted attacks row cannot make a mailed report carry any other file."""
    crafted = _copy_run(runs["watched"], tmp_path / "crafted")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG not yours")
    summary = json.loads((crafted / "summary.json").read_text())
    summary["attacks"][0]["image"] = "../secret.png"
    (crafted / "summary.json").write_text(json.dumps(summary))
    text = write_report(crafted).read_text()
    assert base64.b64encode(b"\x89PNG not yours").decode() not in text
    assert "not an attack image name" in text


def test_time_limited_and_analysing_runs_are_not_called_failed(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    for status, says in (("time_limit", "time limit"), ("analysing", "attack analysis did not")):
        d = _copy_run(runs["coordinated"], tmp_path / status)
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "status": status}))
        text = write_report(d).read_text()
        assert says in text and 'class="fail"' not in text, status


def test_comparison_survives_names_matplotlib_would_read(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """Run names are directory names: `$` would be maths to matplotlib, a leading `_` would
    hide the legend entry, `#` would cut a link."""
    dirs = []
    for name in ("lr$0.1$", "_base", "a#b"):
        d = _copy_run(runs["coordinated"], tmp_path / name)
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "run_id": name}))
        dirs.append(d)
    text = write_comparison(dirs, tmp_path / "c.html").read_text()
    assert "a%23b/report.html" in text
    hrefs = re.findall(r'<a href="([^"#]+)">', text)
    assert len(hrefs) == 3
    from urllib.parse import unquote

    assert all((tmp_path / unquote(h)).is_file() for h in hrefs)


def test_a_failed_attack_analysis_fails_the_run_and_shows_in_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run trained fine, but a run whose attacks were not analysed is not finished: a
    sweep reruns it and `--resume` goes on with it."""
    import p2pfed.experiment as experiment

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the inversion broke")

    monkeypatch.setattr(experiment, "_attacks", broken)
    cfg = _watched()
    cfg["protocol"] = {"kind": "dpsgd", "rounds": 2}
    with pytest.raises(RuntimeError, match="inversion broke"):
        run(cfg, out=tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["attacks_error"] == "RuntimeError: the inversion broke"
    text = (tmp_path / "r" / "report.html").read_text()
    assert "the attack analysis failed: RuntimeError: the inversion broke" in text
