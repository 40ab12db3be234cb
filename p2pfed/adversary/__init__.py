"""Adversaries that watch a run (eavesdroppers, curious peers and coordinators, black-box
attackers): their configuration, what they observe, and — in :mod:`p2pfed.adversary.analyse`
— the attacks they run on it after the run."""

from p2pfed.adversary.config import ActiveConfig, AdversaryConfig
from p2pfed.adversary.observe import FrameLog, Seen

__all__ = ["ActiveConfig", "AdversaryConfig", "FrameLog", "Seen"]
