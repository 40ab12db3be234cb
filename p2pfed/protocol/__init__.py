"""Protocols as pure, sans-IO state machines (see :mod:`p2pfed.protocol.core`)."""

from __future__ import annotations

from typing import Any, Literal

from p2pfed.protocol.codec import Codec, Frame, FrameSize
from p2pfed.protocol.core import (
    Effect,
    Emit,
    Event,
    Message,
    MessageArrived,
    PeerDown,
    PeerUp,
    Protocol,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
)
from p2pfed.protocol.dpsgd import DPSGD, DPSGDState, ModelShare
from p2pfed.protocol.fed import FED_PROTOCOLS, build_fed_protocol
from p2pfed.protocol.gossip import AsyncGossip, GossipReply, GossipRequest, GossipState
from p2pfed.protocol.pushsum import PushSum, PushSumShare, PushSumState
from p2pfed.robust import RobustConfig
from p2pfed.topology import TopologySchedule

ProtocolKind = Literal["dpsgd", "gossip", "pushsum"]

#: config name -> protocol class (the one place a config string names a class); for the
#: coordinator kinds, the class whose ``messages`` cover both roles
PROTOCOLS: dict[str, type[Protocol[Any]]] = {
    "dpsgd": DPSGD,
    "gossip": AsyncGossip,
    "pushsum": PushSum,
    **FED_PROTOCOLS,
}


def build_protocol(
    kind: ProtocolKind,
    peer: int,
    schedule: TopologySchedule,
    *,
    rounds: int,
    seed: int,
    epochs: int = 1,
    steps: int | None = None,
    timeout: float | None = None,
    robust: RobustConfig | None = None,
) -> Protocol[Any]:
    """Build one peer's protocol instance from config values (``robust``: D-PSGD's
    neighbourhood rule, or gossip's pairwise one; push-sum takes none)."""
    if kind == "dpsgd":
        return DPSGD(
            peer,
            schedule,
            rounds=rounds,
            epochs=epochs,
            steps=steps,
            round_timeout=timeout,
            robust=robust,
        )
    if kind == "gossip":
        return AsyncGossip(
            peer,
            schedule,
            rounds=rounds,
            seed=seed,
            epochs=epochs,
            steps=steps,
            reply_timeout=timeout,
            robust=robust,
        )
    return PushSum(peer, schedule, rounds=rounds, epochs=epochs, steps=steps)


__all__ = [
    "DPSGD",
    "FED_PROTOCOLS",
    "PROTOCOLS",
    "AsyncGossip",
    "Codec",
    "DPSGDState",
    "Effect",
    "Emit",
    "Event",
    "Frame",
    "FrameSize",
    "GossipReply",
    "GossipRequest",
    "GossipState",
    "Message",
    "MessageArrived",
    "ModelShare",
    "PeerDown",
    "PeerUp",
    "Protocol",
    "ProtocolKind",
    "PushSum",
    "PushSumShare",
    "PushSumState",
    "Send",
    "SetTimer",
    "Started",
    "Stop",
    "TimerFired",
    "Train",
    "TrainingDone",
    "build_fed_protocol",
    "build_protocol",
]
