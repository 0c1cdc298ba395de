"""The scenario fields for the two call sites a balloon never reaches: ``guest.mappings``
and ``guest.balloon.boot_at``; every mistake is one line naming the field."""

import pytest

from migrate.run.scenario import ScenarioError, load_scenario
from tests.xmig_process import usage_error, xmig

BASE = "guest:\n  memory: 64MiB\n"


def error_of(tmp_path, text) -> str:
    p = tmp_path / "x.yaml"
    p.write_text(text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    return str(ei.value)


def test_a_mapping_reads_gfns_or_addresses(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(BASE + "  mappings:\n    - {at: 2s, kind: mmio, gfns: {start: 32MiB, size: 1MiB}, until: 3s}\n"
                        "    - {at: 1s, kind: foreign, gfns: {start: 0x3000, end: 0x3004}}\n")
    m = load_scenario(p).guest.mappings
    assert (m[0].gfns.first, m[0].gfns.stop, m[0].until) == (0x2000, 0x2100, 3.0)
    assert (m[1].kind, m[1].gfns.stop, m[1].until) == ("foreign", 0x3004, None)


@pytest.mark.parametrize("mapping,needle", [
    ("{at: 2s, kind: grant, gfns: {start: 0x100, size: 4}}", "guest.mappings[0].kind"),
    ("{at: 2s, kind: mmio, gfns: {start: 0x100, size: 4}, until: 1s}",
     "guest.mappings[0].until: expected a time after at (2s), found 1s"),
    ("{at: 2s, kind: mmio, gfns: {start: 0x100}}", "guest.mappings[0].gfns.size: expected exactly one of size or end"),
    ("{at: 2s, kind: mmio}", "guest.mappings[0].gfns"),
])
def test_a_bad_mapping_names_its_field(tmp_path, mapping, needle):
    assert needle in error_of(tmp_path, BASE + f"  mappings:\n    - {mapping}\n")


def test_two_mappings_holding_the_same_gfns_at_once_are_refused(tmp_path):
    msg = error_of(tmp_path, BASE + "  mappings:\n"
                   "    - {at: 1s, kind: mmio, gfns: {start: 0x100, size: 16}, until: 5s}\n"
                   "    - {at: 4s, kind: foreign, gfns: {start: 0x108, size: 16}}\n")
    assert "guest.mappings[1].gfns: expected GFNs no other mapping holds at the same time" in msg


def test_one_after_the_other_on_the_same_gfns_is_fine(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(BASE + "  mappings:\n"
                        "    - {at: 1s, kind: mmio, gfns: {start: 0x100, size: 16}, until: 4s}\n"
                        "    - {at: 4s, kind: foreign, gfns: {start: 0x100, size: 16}}\n")
    assert len(load_scenario(p).guest.mappings) == 2


def test_boot_at_needs_a_pod_guest_and_comes_before_the_schedule(tmp_path):
    assert "guest.balloon.boot_at: expected no boot_at unless the guest boots populate-on-demand" in \
        error_of(tmp_path, BASE + "  balloon: {boot_at: 2s}\n")
    assert "guest.balloon.boot_at: expected a time no later than the first step's 1s, found 2s" in \
        error_of(tmp_path, "guest:\n  memory: 32MiB\n  maxmem: 64MiB\n"
                           "  balloon: {boot_at: 2s, schedule: [{at: 1s, target: 40MiB}]}\n")


def test_the_real_xmig_refuses_a_bad_mapping_in_one_line_with_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text(BASE + "  mappings:\n    - {at: 2s, kind: mmio, gfns: {start: 0x100, size: 4}, "
                                              "until: 1s}\n")
    res = xmig("run", "--guest", "bad.yaml", "--no-dashboard", cwd=tmp_path)
    usage_error(res, "bad.yaml: guest.mappings[0].until: expected a time after at (2s), found 1s")
