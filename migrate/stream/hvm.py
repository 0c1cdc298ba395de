"""The x86 HVM domain state a save sends besides memory: CPU policy, HVM params, context.

Mirrors ``tools/libs/guest/xg_sr_common_x86.c`` (``write_x86_cpu_policy_records``),
``xg_sr_save_x86_hvm.c`` (``write_hvm_params``, ``write_hvm_context``) and the framing
Xen's ``hvm_load`` (``xen/arch/x86/hvm/save.c``) checks on restore. The values are a
fixed, plausible x86 HVM guest: the model only needs them to be deterministic and
well-formed.
"""

from __future__ import annotations

import struct

from hypervisor.abi.hvm import (HVM_PARAM_ACPI_IOPORTS_LOCATION, HVM_PARAM_BUFIOREQ_PFN,  # noqa: F401
    HVM_PARAM_CONSOLE_PFN, HVM_PARAM_IDENT_PT, HVM_PARAM_IOREQ_PFN, HVM_PARAM_NR_IOREQ_SERVER_PAGES,
    HVM_PARAM_STORE_PFN)

from migrate.stream.format import CPUID_LEAF, MSR_ENTRY

# A plausible, fixed CPU policy for an x86 HVM guest (xen_cpuid_leaf_t entries,
# leaf/subleaf ordered as xc_get_cpu_policy serialises them; XEN_CPUID_NO_SUBLEAF
# for leaves without subleaves).
XEN_CPUID_NO_SUBLEAF = 0xFFFFFFFF
_DEFAULT_CPUID = (
    (0x00000000, XEN_CPUID_NO_SUBLEAF, 0x0000000D, 0x756E6547, 0x6C65746E, 0x49656E69),  # GenuineIntel
    (0x00000001, XEN_CPUID_NO_SUBLEAF, 0x000906EA, 0x00010800, 0xF6FA3203, 0x178BFBFF),
    (0x00000007, 0x00000000, 0x00000000, 0x009C27AB, 0x00000000, 0xBC000400),
    (0x0000000D, 0x00000000, 0x00000007, 0x00000340, 0x00000340, 0x00000000),
    (0x0000000D, 0x00000001, 0x0000000F, 0x00000000, 0x00000000, 0x00000000),
    (0x80000000, XEN_CPUID_NO_SUBLEAF, 0x80000008, 0x00000000, 0x00000000, 0x00000000),
    (0x80000001, XEN_CPUID_NO_SUBLEAF, 0x00000000, 0x00000000, 0x00000121, 0x2C100800),
    (0x80000008, XEN_CPUID_NO_SUBLEAF, 0x00003027, 0x00000000, 0x00000000, 0x00000000),
)
_DEFAULT_MSR = (
    (0x000000CE, 0, 0x0000000080000000),  # MSR_INTEL_PLATFORM_INFO: CPUID faulting
    (0x0000010A, 0, 0x000000000000000B),  # MSR_ARCH_CAPABILITIES
)

# HVM_PARAM_* indices (xen/include/public/hvm/params.h) live with the hypervisor's ABI,
# which holds the values; re-exported here for the stream's readers.


def default_cpuid_policy() -> bytes:
    """A deterministic, plausible X86_CPUID_POLICY body (array of xen_cpuid_leaf_t)."""
    return b"".join(CPUID_LEAF.pack(*leaf) for leaf in _DEFAULT_CPUID)


def default_msr_policy() -> bytes:
    """A deterministic, plausible X86_MSR_POLICY body (array of xen_msr_entry_t)."""
    return b"".join(MSR_ENTRY.pack(*e) for e in _DEFAULT_MSR)


def default_hvm_params(max_gpfn: int = 0xFEFFF) -> list[tuple[int, int]]:
    """The HVM params a stream carries when the saver is given none: those of the
    ``compact`` layout (``guest.layout``), whose special pages are not populated. A
    guest built with libxc's layout sets its own (``GuestLayout.hvm_params``)."""
    special = 0xFEFF0
    return [
        (HVM_PARAM_STORE_PFN, special + 0x1),
        (HVM_PARAM_IOREQ_PFN, special),
        (HVM_PARAM_BUFIOREQ_PFN, special + 0x2),
        (HVM_PARAM_IDENT_PT, 0xFEFFD000),
        (HVM_PARAM_CONSOLE_PFN, special + 0x3),
        (HVM_PARAM_ACPI_IOPORTS_LOCATION, 1),
        (HVM_PARAM_NR_IOREQ_SERVER_PAGES, 8),
    ]


HVM_SAVE_MAGIC = 0x54381286


def default_hvm_context(nr_vcpus: int = 1, gtsc_khz: int = 2_400_000) -> bytes:
    """A plausible HVM_CONTEXT blob: hvm_save_descriptor-framed HEADER (typecode 1,
    magic 0x54381286, version 1), one zero-filled CPU record (typecode 2) per vCPU,
    and the END descriptor (typecode 0)."""
    out = bytearray()
    hdr = struct.pack("<IIQII", HVM_SAVE_MAGIC, 1, 0, 0x000906EA, gtsc_khz)
    out += struct.pack("<HHI", 1, 0, len(hdr)) + hdr
    cpu_len = 1024  # struct hvm_hw_cpu is ~1 KiB; contents do not matter to the model
    for v in range(nr_vcpus):
        out += struct.pack("<HHI", 2, v, cpu_len) + bytes(cpu_len)
    out += struct.pack("<HHI", 0, 0, 0)
    return bytes(out)


def check_hvm_context(blob: bytes) -> str | None:
    """Why ``blob`` is not a loadable HVM context (None when it is), checking the
    framing Xen's ``hvm_load`` checks when the toolstack calls
    xc_domain_hvm_setcontext: a HEADER descriptor first (typecode 1, magic
    0x54381286), descriptors that fit the blob, and a final END descriptor (typecode 0)
    exactly at its end."""
    n = len(blob)
    if n < 8 + 24:
        return f"HVM context of {n} bytes is too short for its HEADER"
    code, _inst, length = struct.unpack_from("<HHI", blob, 0)
    if code != 1 or length < 24:
        return f"HVM context does not start with a HEADER descriptor (typecode {code}, length {length})"
    magic = struct.unpack_from("<I", blob, 8)[0]
    if magic != HVM_SAVE_MAGIC:
        return f"HVM context HEADER has bad magic {magic:#010x} (expected {HVM_SAVE_MAGIC:#010x})"
    off = 0
    while off + 8 <= n:
        code, _inst, length = struct.unpack_from("<HHI", blob, off)
        if code == 0:
            if length != 0 or off + 8 != n:
                return f"HVM context END descriptor at byte {off} is not the end of the blob ({n} bytes)"
            return None
        off += 8 + length
        if off > n:
            return f"HVM context descriptor (typecode {code}) overruns the blob ({n} bytes)"
    return "HVM context did not end with a null (END) descriptor"
