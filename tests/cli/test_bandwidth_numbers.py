"""``link.bandwidth`` and ``--bandwidth`` as a plain number of bytes per second.

YAML 1.1 reads ``125e6`` (no dot) as a string, so ``bandwidth: 125e6`` used to be
refused while ``bandwidth: 125000000`` ran. A plain number, in any notation, is bytes/s
(the same link as ``1Gbit/s``); a value that is no bandwidth is still one line, exit 2.
"""

from __future__ import annotations

import json

import pytest

from tests.xmig_process import usage_error

SCENARIO = """\
name: tiny
seed: 3
guest:
  memory: 16MiB
  workloads:
    - {{kind: uniform, rate: 1MiB/s}}
link:
  bandwidth: {bw}
migration:
  start: 100ms
"""


def _report(xmig, tmp_path, bw: str, *extra: str) -> dict:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(bw=bw))
    out = xmig("run", "--guest", path, "--no-dashboard", "--report", tmp_path / "r.json", *extra)
    assert out.returncode == 0, out.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    rep.pop("wall", None)
    rep["stream"].pop("target", None)
    return rep


@pytest.mark.parametrize("bw", ["125e6", "1.25e8", "125000000", "125e6B/s"])
def test_a_plain_number_is_bytes_per_second_in_the_scenario(xmig, tmp_path, bw):
    assert _report(xmig, tmp_path, bw) == _report(xmig, tmp_path, "1Gbit/s")


def test_a_plain_number_is_bytes_per_second_on_the_command_line(xmig, tmp_path):
    a = _report(xmig, tmp_path, "1Gbit/s", "--bandwidth", "125e6")
    b = _report(xmig, tmp_path, "10Mbit/s", "--bandwidth", "1Gbit/s")
    assert a == b


@pytest.mark.parametrize("bw", ["fast", "0", "125e6 bananas", "1e999", "-5"])
def test_a_bad_bandwidth_is_one_line_naming_the_field(xmig, tmp_path, bw):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(bw=bw))
    usage_error(xmig("run", "--guest", path, "--no-dashboard"), "link.bandwidth", "125e6 (bytes/s)")
    good = tmp_path / "good.yaml"
    good.write_text(SCENARIO.format(bw="1Gbit/s"))
    usage_error(xmig("run", "--guest", good, "--no-dashboard", "--bandwidth", bw), "--bandwidth", "expected a bandwidth")
