"""Every exception p2pfed raises, in one tree.

Catch :class:`P2PFedError` to catch them all. Each class says when it is raised.
Messages never carry key material, shares or plaintext updates.
"""

from __future__ import annotations


class P2PFedError(Exception):
    """Base of every error p2pfed raises on purpose."""


class ConfigError(P2PFedError):
    """An experiment or topology file is invalid: unknown key, wrong type, impossible value,
    missing file. The message names the file and the dotted key; the CLI exits with code 2.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.message = message
        self.source = source
        self.key = key
        where = ""
        if source is not None:
            where = f"{source}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class TopologyError(P2PFedError):
    """A graph cannot serve as a topology: disconnected (or not strongly connected when
    directed), self-loops, unknown or duplicate peer ids, impossible generator parameters.
    """


class DataError(P2PFedError):
    """A dataset cannot be loaded or partitioned as asked (e.g. too few samples for the
    number of peers, a partition that leaves a peer empty)."""


class ModelError(P2PFedError):
    """A model cannot be built for the data (e.g. a CNN on tabular data) or a flat
    parameter vector has the wrong size."""


class ProtocolError(P2PFedError):
    """A protocol was configured or driven in a way it cannot handle (e.g. D-PSGD on a
    topology whose mixing matrix is not doubly stochastic)."""


class FrameError(P2PFedError):
    """A frame could not be decoded: malformed msgpack, unknown message type, wrong
    version, array bytes that do not match the declared dtype and shape."""


class RuntimeFailure(P2PFedError):
    """The runtime could not complete a run (e.g. the virtual-time limit was reached
    before every peer finished, or no event is left while peers still wait)."""


class CheckpointError(P2PFedError):
    """A checkpoint cannot be written (some live state does not pickle) or read (missing,
    truncated, another format, or a reference to an object the resuming run lacks), or a
    run directory cannot be resumed (finished already, or its config changed)."""
