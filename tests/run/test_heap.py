"""migrate.heap: freed arrays stay in the process for the next one (glibc only)."""

import os
import subprocess
import sys

import pytest

glibc = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# Rounds of four 2 MiB arrays alive at once, touched, then freed (a span's temporaries);
# prints the page faults of the last two rounds: fresh memory faults its 512 pages an
# array in again each round.
_PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from migrate.heap import keep_freed_arrays
    assert keep_freed_arrays()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(4):
    if i == 2:
        f0 = faults()
    arrays = [np.empty(1 << 18, dtype=np.int64) for _ in range(4)]
    for a in arrays:
        a.fill(i)
    del arrays, a
print(faults() - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "", "MALLOC_TRIM_THRESHOLD_": ""})
    return int(out.stdout.strip())


@pytest.mark.skipif(not glibc, reason="mallopt is glibc's")
def test_a_freed_array_is_reused_without_faulting_its_pages_in_again():
    assert _faults("plain") >= 2 * 4 * 512 * 0.9    # glibc's defaults: handed back, faulted in again each round
    assert _faults("tuned") < 200                  # kept: the next array reuses the same pages


def test_keep_freed_arrays_is_done_once_and_says_whether_it_took():
    from migrate.heap import keep_freed_arrays

    first = keep_freed_arrays()
    assert keep_freed_arrays() is first
    assert first is glibc
