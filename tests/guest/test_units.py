"""Units as people write them: sizes, rates, bandwidths, durations."""

import pytest
from pydantic import BaseModel, ValidationError

from guest.units import (Bandwidth, Duration, Rate, Size, UnitError, format_size, parse_bandwidth,
                           parse_duration, parse_rate, parse_size)


@pytest.mark.parametrize("text,nbytes", [
    ("512MiB", 512 << 20), ("4GiB", 4 << 30), ("1G", 1 << 30), ("64K", 64 << 10),
    ("100MB", 100_000_000), ("1000pages", 1000 * 4096), ("1page", 4096), (4096, 4096),
    ("0.5GiB", 512 << 20), (" 16 MiB ", 16 << 20), ("1TiB", 1 << 40),
])
def test_sizes_parse_to_bytes(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text,pages_s", [
    ("20MiB/s", 20 * 256), ("5000pages/s", 5000), (750, 750.0), ("1GiB/s", 262144), ("4KiBps", 1),
])
def test_rates_parse_to_pages_per_second(text, pages_s):
    assert parse_rate(text) == pytest.approx(pages_s)


@pytest.mark.parametrize("text,bps", [
    ("1Gbit/s", 125e6), ("10Gbps", 1.25e9), ("100MB/s", 100e6), ("1GiB/s", float(1 << 30)),
    ("800Mbit/s", 100e6), (125000000, 125e6), ("1Gb/s", 125e6),
])
def test_bandwidths_parse_to_bytes_per_second(text, bps):
    assert parse_bandwidth(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["125e6", "125E6", "1.25e8", "125000000", " 125e6 ", 125e6, 125000000, "125e6B/s"])
def test_a_bandwidth_may_be_a_plain_number_of_bytes_per_second(text):
    """``bandwidth: 125e6`` in YAML is the string "125e6" (YAML 1.1 wants a dot in a
    float): it means 125e6 bytes/s, as the number 125000000 does."""
    assert parse_bandwidth(text) == 125e6


def test_a_bandwidth_over_the_limit_is_refused_with_the_limit_named():
    with pytest.raises(UnitError, match="at most 100Tbit/s"):
        parse_bandwidth("1e14")


@pytest.mark.parametrize("text", ["2e3", "2000", "2000.0"])
def test_a_rate_may_be_a_plain_number_of_pages_per_second(text):
    assert parse_rate(text) == 2000.0


@pytest.mark.parametrize("text,seconds", [
    ("250ms", 0.25), ("2s", 2.0), ("1.5min", 90.0), ("20us", 20e-6), ("1h", 3600.0), (3, 3.0), ("50µs", 50e-6),
])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("parse,bad,expected", [
    (parse_size, "lots", "a size like 512MiB, 4GiB or 1000pages"),
    (parse_size, "12 furlongs", "a size like 512MiB, 4GiB or 1000pages"),
    (parse_size, -1, "a size like 512MiB, 4GiB or 1000pages"),
    (parse_size, True, "a size like 512MiB, 4GiB or 1000pages"),
    (parse_rate, "fast", "a rate like 20MiB/s or 5000pages/s"),
    (parse_rate, "20MiB", "a rate like 20MiB/s or 5000pages/s"),
    (parse_bandwidth, "1 gigabit", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, 0, "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "0", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "0e3", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "-125e6", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "125e6 bananas", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "1e999", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_bandwidth, "e6", "a bandwidth like 1Gbit/s, 100MB/s or 125e6 (bytes/s)"),
    (parse_duration, "soon", "a duration like 250ms, 2s or 1.5min"),
    (parse_duration, "5 parsecs", "a duration like 250ms, 2s or 1.5min"),
])
def test_bad_values_say_what_was_expected(parse, bad, expected):
    with pytest.raises(UnitError) as ei:
        parse(bad)
    assert ei.value.expected == expected
    assert str(ei.value) == f"expected {expected}, found {bad!r}"


def test_annotated_types_validate_in_models_with_context():
    class M(BaseModel):
        size: Size = 0
        rate: Rate = 0.0
        bw: Bandwidth = 1.0
        d: Duration = 0.0

    m = M(size="1GiB", rate="4MiB/s", bw="1Gbit/s", d="10ms")
    assert (m.size, m.rate, m.bw, m.d) == (1 << 30, 1024.0, 125e6, 0.01)
    with pytest.raises(ValidationError) as ei:
        M(rate="fast")
    err = ei.value.errors()[0]
    assert err["type"] == "xmig_unit"
    assert err["ctx"] == {"expected": "a rate like 20MiB/s or 5000pages/s", "found": "fast"}
    schema = M.model_json_schema()["properties"]["size"]
    assert {"type": "string"}.items() <= schema["anyOf"][1].items()


def test_format_size_uses_exact_binary_units():
    assert format_size(256 << 20) == "256MiB"
    assert format_size(-(1 << 30)) == "-1GiB"
    assert format_size(1000) == "1000B"
