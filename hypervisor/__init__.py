"""The simulated Xen hypervisor: P2M, M2P, frames, PoD and the log-dirty tree."""
