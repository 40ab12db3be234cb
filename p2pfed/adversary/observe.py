"""What an adversary saw during a run: the frames on its links or at its endpoint.

A :class:`FrameLog` is a tap (``(time, src, dst, frame)``, the signature of
:data:`~p2pfed.runtime.base.Tap`) that keeps the frames its filter accepts:

* an eavesdropper's log is a wire tap: it sees each frame as it enters the wire, sealed when
  the channel is (``security.channel: aead``), so it keeps ciphertext there;
* a curious peer's or coordinator's log is an inbox tap (``inbox_taps`` of the engine): the
  frames accepted by any peer, opened, kept when the curious participant is at either end —
  what it received, and what it sent as its receivers got it.

After the run :meth:`FrameLog.decode` turns the frames into :class:`Seen` records with the
run's codec; a frame it cannot decode (sealed, or tampered) is kept as opaque ciphertext —
the adversary saw its size and endpoints only.

Pure: no clock, no Ray; under Ray the hosts record the frames and the driver replays them
into the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pfed.errors import FrameError
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.core import Message


@dataclass(frozen=True)
class Seen:
    """One observed frame: its time, endpoints and size, and the message inside it when the
    adversary could read it (``None``: ciphertext)."""

    t: float
    src: int
    dst: int
    size: int
    message: Message | None

    @property
    def kind(self) -> str | None:
        return None if self.message is None else type(self.message).__name__


class FrameLog:
    """A tap that keeps the frames between the participants it watches.

    ``links``: unordered pairs it taps; ``ends``: participants whose every link it taps (as
    an eavesdropper on all links of a peer, or a curious endpoint)."""

    def __init__(self, *, links: Iterable[tuple[int, int]] = (), ends: Iterable[int] = ()):
        self.links = {frozenset(p) for p in links}
        self.ends = set(ends)
        if not self.links and not self.ends:
            raise ValueError("a FrameLog must watch some links or endpoints")
        self.frames: list[tuple[float, int, int, bytes]] = []

    def watches(self, src: int, dst: int) -> bool:
        return src in self.ends or dst in self.ends or frozenset((src, dst)) in self.links

    def __call__(self, t: float, src: int, dst: int, frame: bytes) -> None:
        if self.watches(src, dst):
            self.frames.append((t, src, dst, bytes(frame)))

    def decode(self, codec: Codec) -> list[Seen]:
        """The frames in time order (stable: a Ray driver replays hosts' records host by
        host), decoded where the adversary can read them."""
        out = []
        for t, src, dst, frame in sorted(self.frames, key=lambda f: f[0]):
            try:
                message: Message | None = codec.decode(frame).message
            except FrameError:
                message = None
            out.append(Seen(t, src, dst, len(frame), message))
        return out
