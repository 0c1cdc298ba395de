"""The errors a migration can end with, one home each.

``MigrationFailed`` is a save that failed the way Xen's ``xc_domain_save`` fails
(tools/libs/guest/xg_sr_save.c returns -1 and libxl resumes the domain at the sender);
``MigrationAborted`` one the policy or the user abandoned. The transport's errors sit
beside them so the actors and transports need not import the engine: a lost peer is
both (``PeerLost``), so the engine aborts the save and resumes the source on one.
"""

from __future__ import annotations


class MigrationFailed(Exception):
    """The save failed the way Xen's would; ``pfn`` names the page when one is at fault."""

    def __init__(self, message: str, pfn: int | None = None):
        super().__init__(message)
        self.pfn = pfn


class MigrationAborted(MigrationFailed):
    """The policy returned XGS_POLICY_ABORT, or the user interrupted the run."""


class TransportError(Exception):
    """The transport cannot do its job (bad broker URL, broker unreachable, run id
    taken); a message a user can act on."""


class BrokerUnreachable(TransportError):
    """The broker refused or did not answer the connection."""


class PeerLost(MigrationAborted, TransportError):
    """A peer (or the broker) went away or stopped answering. A ``MigrationAborted``, so
    the precopy engine aborts the save and resumes the source when it sees one."""

    def __init__(self, message: str, peer: str = ""):
        super().__init__(message)
        self.peer = peer


class RunRefused(TransportError):
    """Another actor of the same kind already holds this run id."""


class ScenarioMismatch(TransportError):
    """The guest actor runs another scenario than the toolstack."""


class UsageError(Exception):
    """Bad input from the user: the command line prints it as one line, exit code 2."""
