"""Progress on long runs: a rich bar on an interactive console, plain lines otherwise."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import IO, Literal, Self

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

ProgressMode = Literal["auto", "bar", "plain", "off"]


class ProgressDisplay:
    """A rich bar on an interactive console, plain lines otherwise, or nothing (``off``);
    always on stderr, since stdout is for results. Subclasses give the bar's columns and
    report into ``self._bar`` or print plain lines."""

    def __init__(self, mode: str, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode = mode
        self._bar: Progress | None = None

    def _columns(self) -> list[ProgressColumn]:
        raise NotImplementedError

    def _started(self) -> None:
        """Called once the display is up (a bar started, or plain/off mode entered)."""

    def __enter__(self) -> Self:
        if self.mode == "bar":
            self._bar = Progress(
                *self._columns(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
        self._started()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


class ProgressReporter(ProgressDisplay):
    """Shows completed local rounds (summed over peers) against the total."""

    def __init__(self, mode: ProgressMode, label: str, stream: IO[str] | None = None):
        super().__init__(mode, stream)
        self.label = label
        self._task: int | None = None
        self._last_decile = -1
        self._last_completed = -1

    def _columns(self) -> list[ProgressColumn]:
        return [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rounds"),
            TextColumn("t={task.fields[t]:.1f}s virtual"),
        ]

    def update(self, t: float, completed: int, total: int) -> None:
        if completed == self._last_completed:
            return
        self._last_completed = completed
        if self._bar is not None:
            if self._task is None:  # created on the first report, when the total is known
                self._task = self._bar.add_task(self.label, total=total, t=t)
            self._bar.update(self._task, completed=completed, total=total, t=t)  # type: ignore[arg-type]
        elif self.mode == "plain" and total > 0:
            decile = (10 * completed) // total
            if decile > self._last_decile:
                self._last_decile = decile
                print(
                    f"{self.label}: {10 * decile:3d}% ({completed}/{total} rounds, "
                    f"t={t:.2f}s virtual)",
                    file=self.stream,
                    flush=True,
                )
