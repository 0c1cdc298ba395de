"""What ``xmig inspect`` prints: a stream's records, pages and PFN range, or why it is invalid.

The counterpart of Xen's ``tools/python/scripts/verify-stream-v2`` (which walks a
stream with ``xen.migration.verify`` and reports what it holds): it reads with the same
validating parser the restore uses, but never raises for a malformed stream.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hypervisor.abi import PFInfo

from migrate.stream.format import RecType, StreamError
from migrate.stream.parser import StreamParser
from migrate.stream.sinks import read_stream


@dataclass
class StreamSummary:
    path: str
    total_bytes: int = 0
    valid: bool = False
    error: str | None = None
    version: int | None = None
    domain_type: str | None = None
    xen_version: str | None = None
    records_by_type: dict[str, int] = field(default_factory=dict)
    pages_by_type: dict[str, int] = field(default_factory=dict)
    data_pages: int = 0
    pfn_min: int | None = None
    pfn_max: int | None = None
    corrupt_pages: int = 0
    skipped_optional: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise_stream(path, *, pfn_limit: int | None = None) -> StreamSummary:
    """Read and validate a stream file; never raises for a malformed stream (the
    error is in ``.error`` and ``.valid`` is False)."""
    s = StreamSummary(path=str(path))
    p = StreamParser(pfn_limit=pfn_limit, strict_pages=False)
    recs: Counter[str] = Counter()
    nib_counts = np.zeros(16, dtype=np.int64)
    lo, hi = None, None
    try:
        if isinstance(path, (str, os.PathLike)):
            try:
                s.total_bytes = os.path.getsize(path)
            except OSError:
                pass
        for rec in read_stream(path, parser=p):
            recs[rec.name] += 1
            if rec.type == RecType.PAGE_DATA:
                nib_counts += np.bincount(rec.nibbles, minlength=16)
                s.data_pages += int(rec.tokens.size)
                rlo, rhi = int(rec.pfns.min()), int(rec.pfns.max())
                lo = rlo if lo is None else min(lo, rlo)
                hi = rhi if hi is None else max(hi, rhi)
                if rec.corrupt_pfns is not None:
                    s.corrupt_pages += int(rec.corrupt_pfns.size)
        s.valid = s.corrupt_pages == 0
        if s.corrupt_pages:
            s.error = f"{s.corrupt_pages} corrupt page(s): not a valid page expansion"
    except StreamError as e:
        s.error = str(e)
    if p.image_header is not None:
        s.version = p.image_header.version
    if p.domain_header is not None:
        s.domain_type = "x86 HVM"
        s.xen_version = f"{p.domain_header.xen_major}.{p.domain_header.xen_minor}"
    s.records_by_type = dict(recs)
    s.pages_by_type = {PFInfo(i).name: int(c) for i, c in enumerate(nib_counts) if c}
    s.pfn_min, s.pfn_max = lo, hi
    s.skipped_optional = len(p.skipped)
    return s
