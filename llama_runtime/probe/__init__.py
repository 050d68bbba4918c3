"""Probe the machine: what it is, as data. Nothing here runs at import time."""

from __future__ import annotations

from .profile import MachineProfile, probe

__all__ = ["MachineProfile", "probe"]
