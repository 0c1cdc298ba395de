"""Precopy policies decide exactly as xg_sr_save.c's simple_precopy_policy and friends."""

import pytest

from migrate.toolstack.policy import (Decision, DowntimePolicy, PolicyError, PrecopyStats, XenLegacyPolicy,
                            XenPolicy, allowed_policies, make_policy)


def S(iteration, dirty, total=0):
    return PrecopyStats(iteration=iteration, total_written=total, dirty_count=dirty)


def test_xen_policy_stops_below_50_dirty_or_at_iteration_5():
    p = XenPolicy()
    assert p.decide(S(0, 1 << 20)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(1, 50)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(1, 49)) == Decision.STOP_AND_COPY
    assert p.decide(S(1, 0)) == Decision.STOP_AND_COPY
    assert p.decide(S(4, 10_000)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(5, 10_000)) == Decision.STOP_AND_COPY


def test_xen_policy_unknown_dirty_count_continues_until_the_cap():
    # The second call of each iteration passes dirty_count = -1 (unknown).
    p = XenPolicy()
    assert p.decide(S(3, -1)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(5, -1)) == Decision.STOP_AND_COPY


def test_xen_policy_numbers_are_settable():
    p = make_policy("xen", {"max_iterations": 2, "dirty_threshold": 1000}, p2m_size=10)
    assert p.decide(S(1, 999)) == Decision.STOP_AND_COPY
    assert p.decide(S(2, -1)) == Decision.STOP_AND_COPY
    assert p.params() == {"max_iterations": 2, "dirty_threshold": 1000}


def test_legacy_policy_stops_after_three_times_memory():
    p = XenLegacyPolicy(p2m_size=1000)
    assert p.decide(S(3, 500, total=3000)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(3, 500, total=3001)) == Decision.STOP_AND_COPY
    assert p.decide(S(29, 500)) == Decision.STOP_AND_COPY


def test_downtime_policy_switches_over_when_pending_fits_bandwidth_times_limit():
    p = DowntimePolicy(downtime_limit=0.3)
    assert p.decide(S(1, 10)) == Decision.CONTINUE_PRECOPY  # no bandwidth measured yet
    p.observe_pass(bytes_sent=4096 * 1000, seconds=1.0)      # 1000 pages/s
    assert p.decide(S(1, 301)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(1, 300)) == Decision.STOP_AND_COPY
    assert DowntimePolicy(max_iterations=3).decide(S(3, 10**6)) == Decision.STOP_AND_COPY


def stop_at_two(stats):
    return 1 if stats.iteration >= 2 else 0


def test_user_policy_loads_from_a_dotted_path_once_enabled():
    p = make_policy("tests.toolstack.test_policy:stop_at_two", None, p2m_size=1,
                    allowed={"tests.toolstack.test_policy:stop_at_two"})
    assert p.decide(S(1, 10**6)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(2, 10**6)) == Decision.STOP_AND_COPY


def stop_below(stats, params):
    return 1 if stats.dirty_count < params["limit"] else 0


def test_user_policy_gets_its_params_as_one_plain_dict():
    p = make_policy("tests.toolstack.test_policy:stop_below", {"limit": 7}, p2m_size=1,
                    allowed={"tests.toolstack.test_policy:stop_below"})
    assert p.decide(S(1, 6)) == Decision.STOP_AND_COPY
    assert p.decide(S(1, 7)) == Decision.CONTINUE_PRECOPY
    assert p.params() == {"limit": 7}


def boom(stats):
    raise RuntimeError("x" * 500)


def test_a_user_policy_that_raises_aborts_with_a_short_message():
    from migrate.toolstack.save import MigrationAborted

    p = make_policy("tests.toolstack.test_policy:boom", None, p2m_size=1, allowed={"tests.toolstack.test_policy:boom"})
    with pytest.raises(MigrationAborted) as exc:
        p.decide(S(1, 6))
    assert "raised RuntimeError" in str(exc.value) and len(str(exc.value)) < 120


@pytest.mark.parametrize("name", ["subprocess:Popen", "logging:FileHandler", "os:system",
                                  "tests.toolstack.test_policy:stop_at_two"])
def test_a_name_the_user_did_not_enable_is_refused_without_importing(name, monkeypatch):
    import sys

    monkeypatch.delenv("XMIG_ALLOW_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "logging.handlers", raising=False)
    with pytest.raises(PolicyError) as exc:
        make_policy(name, {"args": "id", "shell": True}, p2m_size=1)
    assert "unknown policy" in str(exc.value) and "--allow-policy" in str(exc.value)


@pytest.mark.parametrize("name", ["subprocess:Popen", "logging:FileHandler", "os:system"])
def test_even_enabled_a_class_or_builtin_is_never_called(name):
    with pytest.raises(PolicyError) as exc:
        make_policy(name, None, p2m_size=1, allowed={name})
    assert "not a Python function" in str(exc.value)


def test_the_environment_variable_enables_policies():
    assert allowed_policies(["a.b:c"], {"XMIG_ALLOW_POLICY": "d:e, f.g:h"}) == {"a.b:c", "d:e", "f.g:h"}
    with pytest.raises(PolicyError):
        allowed_policies(["not a name"], {})


@pytest.mark.parametrize("params,needle", [
    ({"downtime_limit": "30ms"}, None),
    ({"downtime_limit": 0.03}, None),
    ({"downtime_limit": "fast"}, "downtime_limit: expected a duration"),
    ({"downtime_limit": float("nan")}, "downtime_limit"),
    ({"downtime_limit": float("inf")}, "downtime_limit"),
    ({"downtime_limit": -1}, "downtime_limit"),
    ({"downtime_limit": True}, "downtime_limit"),
    ({"max_iterations": -5}, "max_iterations: expected an integer from 1"),
    ({"max_iterations": 2.5}, "max_iterations"),
    ({"max_iterations": True}, "max_iterations"),
    ({"max_iterations": 10**400}, "max_iterations"),
    ({"max_iterations": "5"}, "max_iterations"),
])
def test_builtin_params_are_typed_and_bounded(params, needle):
    if needle is None:
        p = make_policy("downtime", params, p2m_size=1)
        assert p.downtime_limit == pytest.approx(0.03)
        return
    with pytest.raises(PolicyError) as exc:
        make_policy("downtime", params, p2m_size=1)
    assert needle in str(exc.value) and len(str(exc.value)) < 200


@pytest.mark.parametrize("name,params,needle", [
    ("nope", None, "unknown policy 'nope'"),
    ("nosuchmodule.x:y", None, "cannot load policy"),
    ("tests.toolstack.test_policy:missing", None, "cannot load policy"),
    ("xen", {"max_iters": 3}, "unknown parameter(s) max_iters"),
])
def test_bad_policies_say_what_is_wrong(name, params, needle):
    with pytest.raises(PolicyError) as exc:
        make_policy(name, params, p2m_size=1, allowed={"nosuchmodule.x:y", "tests.toolstack.test_policy:missing"})
    assert needle in str(exc.value)


def test_a_policy_file_in_the_current_folder_is_never_imported(tmp_path, monkeypatch):
    import sys

    (tmp_path / "my_local_policy.py").write_text(
        f"open({str(tmp_path / 'marker')!r}, 'w').close()\ndef stop_now(stats):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(PolicyError):
        make_policy("my_local_policy:stop_now", None, p2m_size=1)
    with pytest.raises(PolicyError):   # even enabled: not on the path, no implicit cwd
        make_policy("my_local_policy:stop_now", None, p2m_size=1, allowed={"my_local_policy:stop_now"})
    assert not (tmp_path / "marker").exists()
