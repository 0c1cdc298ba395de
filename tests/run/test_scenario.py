"""Scenario files: examples load, defaults fill in, every kind of mistake gets its exact message."""

import json
from pathlib import Path

import numpy as np
import pytest

from migrate.run.scenario import (SCHEMA_PATH, ScenarioError, load_scenario, parse_scenario,
                              scenario_json_schema)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def write(tmp_path, text, name="x.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(tmp_path, text) -> ScenarioError:
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    return ei.value


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"balloon", "idle", "webserver", "pod-boot", "nonconverging"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_loads_and_opens_with_a_comment_block(path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    text = path.read_text()
    assert text.startswith("#") and "teaches" in text.split("\n\n")[0]
    assert 256 << 20 <= sc.guest.memory <= 2 << 30


def test_balloon_example_inflates_then_deflates_during_precopy():
    sc = load_scenario(ROOT / "examples" / "balloon.yaml")
    targets = sc.guest.balloon_targets()
    assert len(targets) == 2
    (t_in, down), (t_out, up) = targets
    assert sc.migration.start < t_in < t_out
    assert down < sc.guest.memory_pages and up == sc.guest.memory_pages


def test_tiny_file_gets_defaults(tmp_path):
    sc = load_scenario(write(tmp_path, "guest: {memory: 256MiB}\n", "tiny.yaml"))
    assert sc.name == "tiny" and sc.seed == 1
    assert sc.guest.memory == sc.guest.maxmem == 256 << 20 and not sc.guest.pod
    assert sc.guest.tick == 0.01 and sc.guest.workloads == []
    assert sc.link.bandwidth == 125e6 and sc.link.latency == 0.001
    assert sc.link.batch_overhead == 50e-6 and sc.link.hypercall_overhead == 5e-6
    assert sc.link.clean_rate == 1 << 30 and sc.link.restore_rate is None
    m = sc.migration
    assert (m.start, m.policy, m.policy_params, m.xen_behaviour, m.verify, m.tolerate_vanished, m.deadline) == \
        (1.0, "xen", {}, "fixed", False, False, None)


def test_units_are_read_as_people_write_them():
    sc = parse_scenario({"guest": {"memory": "1GiB", "maxmem": "2GiB", "tick": "5ms",
                                   "workloads": [{"kind": "uniform", "rate": "20MiB/s", "region": {"start": "50%"}}],
                                   "balloon": {"schedule": [{"at": "1.5s", "target": "-256MiB"}]}},
                         "link": {"bandwidth": "10Gbps", "latency": "250us"},
                         "migration": {"start": "2s", "deadline": "1min", "policy_params": {"max_iterations": 3}}})
    assert sc.guest.pod and sc.guest.tick == 0.005
    assert sc.guest.workloads[0].rate == 5120
    assert sc.guest.balloon_targets() == [(1.5, (1 << 30) // 4096 - 65536)]
    assert sc.link.bandwidth == 1.25e9 and sc.link.latency == 250e-6
    assert sc.migration.deadline == 60.0 and sc.migration.policy_params == {"max_iterations": 3}


def test_dump_and_reload_round_trips():
    sc = load_scenario(ROOT / "examples" / "balloon.yaml")
    assert parse_scenario(sc.model_dump(), "again.yaml") == sc
    assert parse_scenario(json.loads(sc.model_dump_json())) == sc


# ------------------------------------------------------------------------ exact errors

def test_bad_unit_names_file_path_expected_and_found(tmp_path):
    e = error_of(tmp_path, "guest:\n  memory: 256MiB\n  workloads:\n    - kind: idle\n"
                           "    - kind: uniform\n      rate: fast\n")
    assert str(e) == (f"{tmp_path / 'x.yaml'}: guest.workloads[1].rate: "
                      "expected a rate like 20MiB/s or 5000pages/s, found 'fast'")
    assert (e.path, e.expected, e.found, e.line) == \
        ("guest.workloads[1].rate", "a rate like 20MiB/s or 5000pages/s", "'fast'", 6)
    assert e.file == str(tmp_path / "x.yaml")


def test_message_format_matches_the_documented_example():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB", "workloads": [{"kind": "idle"}, {"kind": "uniform", "rate": "fast"}]}},
                       "examples/x.yaml")
    assert str(ei.value) == ("examples/x.yaml: guest.workloads[1].rate: expected a rate like 20MiB/s "
                             "or 5000pages/s, found 'fast'")


def test_unknown_key_suggests_the_close_one(tmp_path):
    e = error_of(tmp_path, "guest:\n  memory: 256MiB\n  wrkloads: []\n")
    assert str(e) == (f"{tmp_path / 'x.yaml'}: guest.wrkloads: unknown key 'wrkloads'; did you mean "
                      "'workloads'? (expected one of the keys of guest: balloon, host_memory, layout, mappings, "
                      "maxmem, memory, tick, workloads, write_timing)")
    assert e.suggestion == "workloads" and e.line == 3


def test_unknown_top_level_key_comes_before_the_missing_section_it_explains():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"gest": {"memory": "1GiB"}}, "s.yaml")
    assert ei.value.path == "gest" and ei.value.suggestion == "guest"
    assert [o.path for o in ei.value.others] == ["guest"]


def test_unknown_key_inside_a_workload():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB", "workloads": [{"kind": "zipf", "rate": 5, "exponnent": 1.2}]}}, "s.yaml")
    assert ei.value.path == "guest.workloads[0].exponnent" and ei.value.suggestion == "exponent"


def test_unknown_workload_kind_suggests_one():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB", "workloads": [{"kind": "unifrom", "rate": 5}]}}, "s.yaml")
    assert str(ei.value) == ("s.yaml: guest.workloads[0].kind: expected a workload kind, one of idle, uniform, "
                             "hotset, zipf, sequential, once, trace, found 'unifrom' (did you mean 'uniform'?)")


def test_wrong_type():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"seed": "abc", "guest": {"memory": "1GiB"}}, "s.yaml")
    assert str(ei.value) == "s.yaml: seed: expected an integer, found 'abc'"
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB", "workloads": {"kind": "idle"}}}, "s.yaml")
    assert str(ei.value) == "s.yaml: guest.workloads: expected a list, found a mapping"


def test_bad_literal_suggests_the_spelling():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB"}, "migration": {"xen_behaviour": "prefix"}}, "s.yaml")
    assert str(ei.value) == ("s.yaml: migration.xen_behaviour: expected 'fixed' or 'pre-fix', or a mapping "
                             "of call site to 'fixed' or 'pre-fix', found 'prefix' (did you mean 'pre-fix'?)")


def test_per_site_behaviour_names_the_bad_site_with_a_suggestion():
    sites = {"p2m_remove_page": "fixed", "set_typed_p2m_entry": "fixed",
             "pod_decrease_reservation": "fixed", "guest_physmap_add_entry": "pre-fix"}
    sc = parse_scenario({"guest": {"memory": "1GiB"}, "migration": {"xen_behaviour": sites}}, "s.yaml")
    assert sc.migration.xen_behaviour == sites
    bad = {**sites, "guest_physmap_add": "fixed"}
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB"}, "migration": {"xen_behaviour": bad}}, "s.yaml")
    assert str(ei.value).startswith("s.yaml: migration.xen_behaviour.guest_physmap_add: expected a call site")
    assert "did you mean 'guest_physmap_add_entry'?" in str(ei.value)
    with pytest.raises(ScenarioError, match=r"xen_behaviour.p2m_remove_page: expected 'fixed' or 'pre-fix', "
                                            r"found 'on'"):
        parse_scenario({"guest": {"memory": "1GiB"},
                        "migration": {"xen_behaviour": {**sites, "p2m_remove_page": "on"}}}, "s.yaml")
    with pytest.raises(ScenarioError, match="none for set_typed_p2m_entry"):
        parse_scenario({"guest": {"memory": "1GiB"},
                        "migration": {"xen_behaviour": {"p2m_remove_page": "fixed"}}}, "s.yaml")


def test_missing_required_field():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"maxmem": "1GiB"}}, "s.yaml")
    assert str(ei.value) == "s.yaml: guest.memory: expected a value (this field is required), found nothing"


def test_cross_field_errors_point_at_the_field():
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "1GiB", "maxmem": "512MiB"}}, "s.yaml")
    assert str(ei.value) == "s.yaml: guest.maxmem: expected at least memory (1GiB), found 512MiB"
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "256MiB", "balloon": {"schedule": [
            {"at": "1s", "target": "-128MiB"}, {"at": "2s", "target": "-256MiB"}]}}}, "s.yaml")
    assert str(ei.value) == ("s.yaml: guest.balloon.schedule[1].target: expected a whole number of pages "
                             "between 1 page and maxmem (256MiB), found -256MiB (a target of -128MiB)")
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "256MiB", "workloads": [
            {"kind": "uniform", "rate": 1, "region": {"start": "80%", "size": "30%"}}]}}, "s.yaml")
    assert ei.value.path == "guest.workloads[0].region"
    with pytest.raises(ScenarioError) as ei:
        parse_scenario({"guest": {"memory": "256MiB", "layout": {"high_pages": [5]}}}, "s.yaml")
    assert ei.value.path == "guest.layout.high_pages"


def test_missing_file():
    with pytest.raises(ScenarioError) as ei:
        load_scenario("examples/does-not-exist.yaml")
    assert str(ei.value) == "examples/does-not-exist.yaml: expected a scenario file, found no such file"
    assert ei.value.path == ""


def test_yaml_syntax_error_gives_the_line(tmp_path):
    e = error_of(tmp_path, "guest:\n  memory: 256MiB\n  workloads: [\n")
    assert e.expected == "valid YAML" and e.line is not None
    assert str(e).startswith(f"{tmp_path / 'x.yaml'}: expected valid YAML, found ")
    assert f"at line {e.line}, column" in str(e)


def test_duplicate_keys_are_refused(tmp_path):
    e = error_of(tmp_path, "guest:\n  memory: 256MiB\n  memory: 512MiB\n")
    assert "duplicate key 'memory' (first at line 2)" in str(e) and e.line == 3


@pytest.mark.parametrize("text,found", [("- 1\n- 2\n", "a list"), ("", "an empty file"), ("42\n", "42")])
def test_top_level_must_be_a_mapping(tmp_path, text, found):
    e = error_of(tmp_path, text)
    assert str(e) == f"{tmp_path / 'x.yaml'}: expected a mapping with a guest: section, found {found}"


def test_trace_paths_resolve_against_the_scenario_file(tmp_path):
    (tmp_path / "t").mkdir()
    np.savez(tmp_path / "t" / "w.npz", time_s=np.array([0.0, 0.5]), gfn=np.array([1, 2]))
    sc = load_scenario(write(tmp_path, "guest:\n  memory: 16MiB\n  workloads:\n    - {kind: trace, path: t/w.npz}\n"))
    assert sc.guest.workloads[0].path == str(tmp_path / "t" / "w.npz")
    e = error_of(tmp_path, "guest:\n  memory: 16MiB\n  workloads:\n    - {kind: trace, path: nope.csv}\n")
    assert str(e) == (f"{tmp_path / 'x.yaml'}: guest.workloads[0].path: expected an existing CSV or .npz "
                      "trace file (relative to the scenario file), found 'nope.csv'")


# ------------------------------------------------------------------------ schema

def test_shipped_schema_equals_the_generated_one():
    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped == scenario_json_schema(), "run: python -m migrate.run.scenario"


def test_examples_validate_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml
    schema = scenario_json_schema()
    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"guest": {"memory": "1GiB", "wrkloads": []}}, schema)


def test_a_choice_in_the_wrong_case_suggests_the_right_one(tmp_path):
    e = error_of(tmp_path, "guest: {memory: 16MiB}\nmigration: {engine: SPAN}\n")
    assert str(e) == (f"{tmp_path / 'x.yaml'}: migration.engine: expected one of 'span' or 'reference', "
                      "found 'SPAN' (did you mean 'span'?)")


def test_a_key_in_the_wrong_section_names_the_section_it_belongs_to(tmp_path):
    e = error_of(tmp_path, "guest: {memory: 16MiB}\nmigration: {write_timing: tick}\n")
    assert "migration.write_timing: unknown key 'write_timing'; did you mean 'guest.write_timing'?" in str(e)
    e = error_of(tmp_path, "guest: {memory: 16MiB, engine: span}\n")
    assert "guest.engine: unknown key 'engine'; did you mean 'migration.engine'?" in str(e)
