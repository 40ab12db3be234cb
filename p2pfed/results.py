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
            w.writerow(
                ["src", "dst", "frames", "lost", "payload_bytes", "metadata_bytes", "crypto_bytes"]
            )
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
        (self.run_dir / "summary.json").write_text(text + "\n")

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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Load metrics.jsonl of a run directory."""
    with (Path(run_dir) / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


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
