"""Precopy policies decide exactly as xg_sr_save.c's simple_precopy_policy and friends."""

import pytest

from migrate.policy import (Decision, DowntimePolicy, PolicyError, PrecopyStats, XenLegacyPolicy,
                            XenPolicy, make_policy)


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


def test_user_policy_loads_from_a_dotted_path():
    p = make_policy("tests.test_policy:stop_at_two", None, p2m_size=1)
    assert p.decide(S(1, 10**6)) == Decision.CONTINUE_PRECOPY
    assert p.decide(S(2, 10**6)) == Decision.STOP_AND_COPY


@pytest.mark.parametrize("name,params,needle", [
    ("nope", None, "unknown policy 'nope'"),
    ("nosuchmodule.x:y", None, "cannot load policy"),
    ("tests.test_policy:missing", None, "no callable 'missing'"),
    ("xen", {"max_iters": 3}, "unknown parameter(s) max_iters"),
])
def test_bad_policies_say_what_is_wrong(name, params, needle):
    with pytest.raises(PolicyError) as exc:
        make_policy(name, params, p2m_size=1)
    assert needle in str(exc.value)


def test_a_policy_file_in_the_current_folder_is_found(tmp_path, monkeypatch):
    import sys

    (tmp_path / "my_local_policy.py").write_text("def stop_now(stats):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    p = make_policy("my_local_policy:stop_now", None, p2m_size=1)
    assert p.decide(S(0, 10**6)) == Decision.STOP_AND_COPY
