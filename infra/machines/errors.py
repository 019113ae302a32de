"""Errors of the machines layer. Each message says what went wrong and how to fix it."""
from __future__ import annotations


class MachineError(Exception):
    """Base class: a problem with a machine or the host it runs on."""


class HostSetupError(MachineError):
    """The host lacks something machines need (root, a package, a cgroup hierarchy, a free bridge name)."""


class RootfsBuildError(MachineError):
    """Building the base root filesystem failed."""


class MachineSpecError(MachineError, ValueError):
    """A machine description is invalid (bad name, address outside its network, ...)."""


class MachineConflictError(MachineError):
    """A machine of that name exists with a different spec."""


class MachineNotReadyError(MachineError):
    """A machine booted but did not become reachable over SSH in time."""
