"""A background thread that calls ``sample()`` every ``interval`` seconds while a block runs
(the memory samplers of the benchmark scripts share it)."""

from __future__ import annotations

import threading
from typing import Any, TypeVar

_S = TypeVar("_S", bound="Sampler")


class Sampler:
    """Subclasses define ``sample``; ``with`` samples once on entry, then every
    ``interval`` seconds in a daemon thread, and once more on exit."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> Any:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self: _S) -> _S:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
