"""Units as people write them in scenario files: sizes, rates, bandwidths, durations.

Each ``parse_*`` function turns a number or a string such as ``512MiB``, ``20MiB/s``,
``1Gbit/s`` or ``250ms`` into a plain number in one canonical unit:

=============  ==========================================  ===========================
kind           accepted                                     result
=============  ==========================================  ===========================
size           ``512MiB`` ``4GiB`` ``1G`` ``100MB``          bytes (int)
               ``1000pages`` ``1page``, or an int of bytes
rate           ``20MiB/s`` ``5000pages/s``, or a number      pages per second (float)
               of pages per second
bandwidth      ``1Gbit/s`` ``10Gbps`` ``100MB/s`` ``1GiB/s``  bytes per second (float)
               or a number of bytes per second
               (``125000000``, ``125e6``, ``1.25e8``)
duration       ``250ms`` ``2s`` ``1.5min`` ``20us`` ``1h``   seconds (float)
               or a number of seconds
=============  ==========================================  ===========================

Binary prefixes: ``KiB MiB GiB TiB`` and the bare ``K M G T`` (memory sizes as ``xl``
writes them) are powers of 1024; ``kB KB MB GB TB`` are powers of 1000. Bit rates
(``bit/s``, ``bps``, ``b/s``) are always decimal, as networks count them. A page is
4 KiB (``hypervisor.abi.PAGE_SIZE``).

``Size``, ``Rate``, ``Bandwidth`` and ``Duration`` are ``typing.Annotated`` types that
pydantic models use directly; a bad value fails validation with a
``PydanticCustomError`` of type ``xmig_unit`` whose context carries ``expected`` (e.g.
"a size like 512MiB") and ``found``, which ``migrate.run.scenario`` turns into its one-line
error. Each type also carries its JSON Schema (a number or a patterned string).

This module lives in ``guest/`` because ``guest.config`` needs it and ``guest`` imports
nothing from ``migrate`` (imports point ``migrate -> guest -> hypervisor``); the
toolstack imports it from here too.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from hypervisor.abi import PAGE_SIZE

__all__ = [
    "UnitError", "parse_size", "parse_rate", "parse_bandwidth", "parse_duration",
    "format_size", "format_duration", "Size", "Rate", "Bandwidth", "Duration",
    "SIZE_EXPECTED", "RATE_EXPECTED", "BANDWIDTH_EXPECTED", "DURATION_EXPECTED",
    "unit_error", "PAGE_SIZE",
]

SIZE_EXPECTED = "a size like 512MiB, 4GiB or 1000pages"
RATE_EXPECTED = "a rate like 20MiB/s or 5000pages/s"
BANDWIDTH_EXPECTED = "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"
DURATION_EXPECTED = "a duration like 250ms, 2s or 1.5min"


class UnitError(ValueError):
    """A value is not a quantity of the expected kind. ``expected`` says what would do."""

    def __init__(self, expected: str, found: Any):
        self.expected = expected
        self.found = found
        text = repr(found)
        text = text if len(text) <= 40 else text[:37] + "..."   # an excerpt, never a whole value
        super().__init__(f"expected {expected}, found {text}")


_BYTE_UNITS = {
    "": 1, "b": 1, "B": 1, "byte": 1, "bytes": 1,
    "K": 1 << 10, "KiB": 1 << 10, "k": 1 << 10, "kiB": 1 << 10,
    "M": 1 << 20, "MiB": 1 << 20,
    "G": 1 << 30, "GiB": 1 << 30,
    "T": 1 << 40, "TiB": 1 << 40,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "page": PAGE_SIZE, "pages": PAGE_SIZE,
}
# Bandwidth byte units: a bare "M" in a bandwidth is ambiguous, so only explicit forms.
_BW_BYTE_UNITS = {
    "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
_BIT_PREFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
# (multiplier, divisor): dividing keeps 20us == 20e-6 exactly as written.
_DURATION_UNITS = {
    "": (1, 1), "s": (1, 1), "sec": (1, 1), "secs": (1, 1), "second": (1, 1), "seconds": (1, 1),
    "ms": (1, 10**3), "us": (1, 10**6), "µs": (1, 10**6), "μs": (1, 10**6), "ns": (1, 10**9),
    "min": (60, 1), "mins": (60, 1), "minute": (60, 1), "minutes": (60, 1),
    "h": (3600, 1), "hour": (3600, 1), "hours": (3600, 1),
}

_NUM = r"(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
_QTY_RE = re.compile(r"^\s*" + _NUM + r"\s*(?P<unit>[A-Za-zµμ/]*)\s*$")


def _split(value: str) -> tuple[float, str, str] | None:
    m = _QTY_RE.match(value)
    if not m:
        return None
    return float(m.group("num")), m.group("unit"), m.group("num")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Upper bounds past which a quantity cannot mean anything the simulation can honour
# (a float overflows to inf in the tick arithmetic, or a run would never end): a size
# of 1 PiB, a write rate of 2^32 pages/s (16 TiB/s), a link of 100 Tbit/s, 30 days.
SIZE_MAX = 1 << 50
RATE_MAX = float(1 << 32)
BANDWIDTH_MAX = 12.5e12
DURATION_MAX = 30 * 86400.0


def _quantity(value: Any, expected: str, plain, with_unit):
    """The one shape of every parser: a plain number goes through ``plain(v)``, a string
    ``"<num><unit>"`` through ``with_unit(num, unit)``; either returns the value in base
    units or None when it does not fit, which becomes ``UnitError(expected, value)``."""
    out = None
    if _is_number(value):
        if isinstance(value, int) and abs(value) > 1 << 63:
            out = None                 # math.isfinite would overflow on a huge int
        elif math.isfinite(value):
            out = plain(value)
    elif isinstance(value, str):
        parts = _split(value)
        if parts is not None and math.isfinite(parts[0]):
            out = with_unit(parts[0], parts[1])
    if out is None or (isinstance(out, float) and math.isnan(out)):
        raise UnitError(expected, value)
    return out


def _size_with_unit(num: float, unit: str) -> int | None:
    mult = _BYTE_UNITS.get(unit)
    if mult is None:
        return None
    nbytes = num * mult
    if not math.isfinite(nbytes):
        return None
    return int(round(nbytes)) if abs(nbytes - round(nbytes)) < 1e-6 else None


def _rate_with_unit(num: float, unit: str) -> float | None:
    for suffix in ("/s", "ps"):
        base = unit[: -len(suffix)]
        if unit.endswith(suffix) and base not in ("", "b"):
            mult = _BYTE_UNITS.get(base)
            if mult is not None:
                return num * mult / PAGE_SIZE
    return num if unit == "" else None     # a bare number (``2e3`` in YAML is a string): pages/s


def _bandwidth_with_unit(num: float, unit: str) -> float | None:
    bps = None
    if unit == "":
        # A bare number in a string is bytes/s, as a bare YAML number is: YAML 1.1
        # reads ``125e6`` (no dot) as a string, so it must not be refused for that.
        bps = num
    m = re.fullmatch(r"([kKMGT]?)(?:bit/s|bps|b/s)", unit)
    if m:
        bps = num * _BIT_PREFIX[m.group(1)] / 8.0
    else:
        m = re.fullmatch(r"([A-Za-z]+)(?:/s|ps)", unit)
        if m and m.group(1) in _BW_BYTE_UNITS:
            bps = num * _BW_BYTE_UNITS[m.group(1)]
    return float(bps) if bps is not None and bps > 0 and math.isfinite(bps) else None


def _duration_with_unit(num: float, unit: str) -> float | None:
    md = _DURATION_UNITS.get(unit)
    return None if md is None else num * md[0] / md[1]


def _bounded(out, limit: float, expected: str, value: Any, limit_text: str):
    if out is not None and out > limit:
        raise UnitError(f"{expected}, at most {limit_text}", value)
    return out


def parse_size(value: Any, *, expected: str = SIZE_EXPECTED) -> int:
    """A size in bytes (int). Plain integers are bytes; fractional bytes are refused."""
    out = _quantity(value, expected, lambda v: int(v) if v >= 0 and v == int(v) else None,
                    _size_with_unit)
    return _bounded(out, SIZE_MAX, expected, value, "1PiB")


def parse_rate(value: Any, *, expected: str = RATE_EXPECTED) -> float:
    """A page-write rate in pages per second (float). Plain numbers are pages/s."""
    out = _quantity(value, expected, lambda v: float(v) if v >= 0 else None, _rate_with_unit)
    return _bounded(out, RATE_MAX, expected, value, "16TiB/s")


def parse_bandwidth(value: Any, *, expected: str = BANDWIDTH_EXPECTED) -> float:
    """A link bandwidth in bytes per second (float). Plain numbers are bytes/s."""
    out = _quantity(value, expected, lambda v: float(v) if v > 0 else None, _bandwidth_with_unit)
    return _bounded(out, BANDWIDTH_MAX, expected, value, "100Tbit/s")


def parse_duration(value: Any, *, expected: str = DURATION_EXPECTED) -> float:
    """A duration in seconds (float). Plain numbers are seconds."""
    out = _quantity(value, expected, lambda v: float(v) if v >= 0 else None, _duration_with_unit)
    return _bounded(out, DURATION_MAX, expected, value, "30 days")


def format_size(nbytes: int) -> str:
    """``268435456`` -> ``'256MiB'`` (exact binary units where possible)."""
    if nbytes < 0:
        return "-" + format_size(-nbytes)
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return f"{nbytes}B"


def format_duration(seconds: float) -> str:
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def unit_error(expected: str, found: Any) -> PydanticCustomError:
    """The pydantic error every unit type raises; ``migrate.run.scenario`` reads its ctx."""
    return PydanticCustomError("xmig_unit", "expected {expected}, found {found}",
                               {"expected": expected, "found": found})


def _validator(parse, expected):
    def validate(value: Any):
        try:
            return parse(value, expected=expected)
        except UnitError as e:
            raise unit_error(e.expected, e.found) from None
    return PlainValidator(validate)


_SIZE_PATTERN = r"^\s*[0-9.]+(e[+-]?[0-9]+)?\s*(B|bytes?|[KMGT]|[kK]iB|[MGT]iB|[kKMGT]B|pages?)?\s*$"
_RATE_PATTERN = r"^\s*[0-9.]+([eE][+-]?[0-9]+)?\s*(([kKMGT]|[kK]iB|[MGT]iB|[kKMGT]B|B|pages?)(/s|ps))?\s*$"
_BW_PATTERN = r"^\s*[0-9.]+([eE][+-]?[0-9]+)?\s*([kKMGT]?(bit/s|bps|b/s)|([KMGT]iB|[kKMGT]B|B)(/s|ps))?\s*$"
_DURATION_PATTERN = r"^\s*[0-9.]+(e[+-]?[0-9]+)?\s*(s|secs?|seconds?|ms|us|µs|μs|ns|mins?|minutes?|h|hours?)?\s*$"


def _schema(description: str, pattern: str, minimum_exclusive: bool = False) -> WithJsonSchema:
    num: dict[str, Any] = {"type": "number"}
    num["exclusiveMinimum" if minimum_exclusive else "minimum"] = 0
    return WithJsonSchema({"anyOf": [num, {"type": "string", "pattern": pattern}],
                           "description": description})


#: Bytes (int). ``512MiB``, ``4GiB``, ``1G``, ``1000pages`` or an int of bytes.
Size = Annotated[int, _validator(parse_size, SIZE_EXPECTED),
                 _schema("A size: bytes, or a string like 512MiB, 4GiB, 1G, 100MB or 1000pages.",
                         _SIZE_PATTERN)]
#: Pages per second (float). ``20MiB/s``, ``5000pages/s`` or a number of pages/s.
Rate = Annotated[float, _validator(parse_rate, RATE_EXPECTED),
                 _schema("A rate: pages per second, or a string like 20MiB/s or 5000pages/s.",
                         _RATE_PATTERN)]
#: Bytes per second (float). ``1Gbit/s``, ``10Gbps``, ``100MB/s`` or a number of bytes/s.
Bandwidth = Annotated[float, _validator(parse_bandwidth, BANDWIDTH_EXPECTED),
                      _schema("A bandwidth: bytes per second (125e6 or 1.25e8), or a string like 1Gbit/s, "
                              "10Gbps or 100MB/s.",
                              _BW_PATTERN, minimum_exclusive=True)]
#: Seconds (float). ``250ms``, ``2s``, ``1.5min``, ``20us`` or a number of seconds.
Duration = Annotated[float, _validator(parse_duration, DURATION_EXPECTED),
                     _schema("A duration: seconds, or a string like 250ms, 2s, 1.5min or 20us.",
                             _DURATION_PATTERN)]
