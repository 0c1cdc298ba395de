"""The simulated guest: write workloads, the balloon driver, PoD boot, and a
``run(t0, t1)`` step that yields the guest's writes and hypercalls on virtual time.

Imports only the hypervisor's ABI (``hypervisor.abi``, ``hypervisor.content``).
"""

from .config import GuestConfig
from .events import GuestEvent
from .guest import Guest, GuestStats
from .layout import GuestLayout

__all__ = ["Guest", "GuestConfig", "GuestEvent", "GuestStats", "GuestLayout"]
