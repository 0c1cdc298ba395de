"""The teaching app, driven headless by Textual's pilot at the sizes people use, and the
map's legend against the report's own numbers."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from pathlib import Path

import pytest

from migrate.events import EventBus, PassEnded, PassStarted
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.ui.app import HelpScreen, XmigApp
from migrate.ui.model import RunView

EX = Path(__file__).resolve().parents[2] / "examples"
SIZES = [(80, 24), (120, 40), (200, 60)]


def record(name: str, behaviour: str, layout: str | None = None):
    """One run of an example: its events (as a recorder would keep them) and its result
    (``layout``: the guest's layout kind instead of the example's)."""
    events = []

    def keep(ev):
        if isinstance(ev, PassEnded):       # the pass as it was when it ended
            ev = dataclasses.replace(ev, stats=copy.copy(ev.stats))
        events.append(ev)

    bus = EventBus()
    bus.subscribe(keep)
    sc = load_scenario(EX / name)
    if layout is not None:
        g = sc.guest
        sc = sc.model_copy(update={"guest": g.model_copy(update={"layout": type(g.layout).model_validate(layout)})})
    result = asyncio.run(run_scenario(sc, RunOptions(behaviour=behaviour), bus=bus))
    return events, result


_CACHE: dict = {}


def recorded(name: str, behaviour: str, layout: str | None = None):
    if (name, behaviour, layout) not in _CACHE:
        _CACHE[name, behaviour, layout] = record(name, behaviour, layout)
    return _CACHE[name, behaviour, layout]


@pytest.fixture
def prefix_run():
    return recorded("balloon.yaml", "pre-fix")


@pytest.fixture
def fixed_run():
    return recorded("balloon.yaml", "fixed")


# ----------------------------------------------------------------------------- legend = report


@pytest.mark.parametrize("name", ["balloon.yaml", "balloon-stale.yaml"])
@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_legend_counts_equal_the_reports_numbers(name, behaviour):
    events, result = recorded(name, behaviour)
    view = RunView()
    xtab_at_end, leftover_at_start = {}, {}
    for ev in events:
        view.feed(ev)
        if isinstance(ev, PassEnded) and ev.stats.phase != "verify":
            xtab_at_end[ev.stats.iteration] = view.gfnmap.totals()["xtab"]
        if isinstance(ev, PassStarted):
            leftover_at_start[ev.iteration] = view.gfnmap.totals()["leftover"]
    rounds = {r.iteration: r for r in result.save.rounds}
    # the XTAB state is what each pass listed without data, pass by pass
    assert xtab_at_end == {i: r.xtab_sent for i, r in rounds.items()}
    totals = view.gfnmap.totals()
    assert totals["missing"] == result.verify.missing_pages
    assert totals["stale"] == result.verify.stale_pages
    assert sum(totals.values()) == view.gfnmap.p2m_size
    if behaviour == "fixed":
        assert max(leftover_at_start.values()) == 0
        assert totals["missing"] == totals["stale"] == 0
    else:
        assert totals["missing"] > 0


def test_pre_fix_leftover_bits_become_the_xtab_entries_of_pass_2():
    events, result = recorded("balloon.yaml", "pre-fix")
    view = RunView()
    for ev in events:
        view.feed(ev)
        if isinstance(ev, PassStarted) and ev.iteration == 2:
            break
    assert view.gfnmap.totals()["leftover"] == result.save.rounds[1].xtab_sent == 3357
    cap = view.caption
    assert cap.interesting and "3,357 of them are not in the P2M" in cap.text


def test_pass_table_balloon_column_agrees_with_the_report_and_adds_up():
    events, result = recorded("balloon.yaml", "pre-fix")
    view = RunView()
    for ev in events:
        view.feed(ev)
    rows = {r.iteration: r for r in view.state.rounds}
    for r in result.save.rounds:
        assert (rows[r.iteration].balloon_out, rows[r.iteration].balloon_in) == (r.balloon_out, r.balloon_in)
    assert rows[3].balloon_in == 41943
    assert view.state.balloon_during_passes == (65536, 65536)


# ----------------------------------------------------------------------------- the app at three sizes


async def until(pilot, cond, timeout=30.0):
    t = 0.0
    while not cond():
        await pilot.pause(0.05)
        t += 0.05
        assert t < timeout, "the app did not get there in time"
    await pilot.pause(0.1)


def shown(app, pid: str) -> bool:
    w = app.query_one(f"#{pid}")
    return w.display and w.parent.display and w.region.area > 0


async def test_keys_pause_step_speed_help_and_quit_aborts_cleanly():
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=2.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.views[0].state.t > 1.2)
        await pilot.press("space")
        assert app.paused and app.playback.paused
        await pilot.pause(0.2)
        t0 = app.views[0].state.t
        await pilot.pause(0.4)
        assert app.views[0].state.t == t0                  # virtual time stopped
        assert "PAUSED" in app.query_one("#header").plain()
        await pilot.press("plus")
        assert app.playback.speed == 5.0
        await pilot.press("minus", "minus")
        assert app.playback.speed == 1.0
        await pilot.press("n")                             # to the balloon's target note at t=3 s
        await until(pilot, lambda: app.paused)
        assert "balloon inflates 256 MiB: decrease_reservation removes 65,536 GFNs" in app.views[0].caption.text
        assert 2.9 < app.views[0].state.t < 3.2
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause(0.2)
    res = app.return_value[0]
    assert res.save.outcome == "aborted"                  # the engine aborted, the source resumed


async def test_guided_stops_at_each_event_of_interest():
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="fixed"), speed=None,
                          guided=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.paused)
        assert "migration of 'balloon' starts (fixed)" in app.views[0].caption.text
        seen = []
        for _ in range(4):
            await pilot.press("space")
            await until(pilot, lambda: app.paused or app.done)
            seen.append(app.views[0].caption.text)
        assert any("fixed: any of them that are dirty are marked clean" in s for s in seen)
        assert any("none of the 65,536 ballooned GFNs is listed: the fix cleaned their bits" in s for s in seen)
        await pilot.press("q")


def _final_screen(app) -> str:
    return "\n".join(app.query_one(f"#{p}").plain() for p in ("table", "map", "pass"))


@pytest.mark.parametrize("size", SIZES)
async def test_run_then_its_replay_at_every_size(size, prefix_run):
    """The live run shows header, pass table and map at every size; its recorded events
    replayed reach the same final screen, and seek to a pass."""
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        text = app.screen_text()
        assert "balloon  seed 1  pre-fix  policy xen" in text
        assert "destination DIVERGED: 42,576 missing, 0 stale" in text
        assert "pass 6 final  19,165/19,165 PFNs" in text
        table = app.query_one("#table").plain()
        head = next(ln for ln in table.splitlines() if ln.lstrip().startswith("#"))
        assert "…" not in head and "bal -/+" in head and "XTAB" in head
        # the balloon column stays readable: pass 4's moves where it is shown, else the last rows'
        assert "0/23593" in table or ("earlier passes not shown" in table and "0/0" in table)
        legend = app.query_one("#map").plain()
        assert "missing 42,576" in legend and "sent 219,584" in legend
        for pid in ("header", "caption", "pass", "table", "map"):
            assert shown(app, pid), pid
        small = size[0] < 120
        assert shown(app, "balloon") is not small and shown(app, "hv") is not small
        if small:
            await pilot.press("d")                         # details: balloon and hypervisor
            await pilot.pause(0.1)
            assert shown(app, "balloon") and shown(app, "hv") and not shown(app, "map")
            assert "-65536/+65536" in app.query_one("#balloon").plain()
            await pilot.press("d")
            await pilot.pause(0.1)
        want = _final_screen(app)
        await pilot.press("q")
    assert app.return_value[0].save.outcome == "completed"

    events, _ = prefix_run
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        assert _final_screen(app) == want
        await pilot.press("2")                             # seek: as pass 2 started
        await pilot.pause(0.2)
        s = app.views[0].state
        assert s.current.iteration == 2 and app.paused
        assert "leftover 3,357" in app.query_one("#map").plain()
        await pilot.press("n")                             # the first XTAB of pass 2
        await until(pilot, lambda: app.paused and app.views[0].caption.slow)
        assert "pass 2 reaches GFNs not in the P2M" in app.views[0].caption.text
        await pilot.press("q")


@pytest.mark.parametrize("size", SIZES)
async def test_watch_fed_through_the_same_queue(size, fixed_run):
    events, _ = fixed_run

    async def watch(listener):
        for ev in events:
            listener(ev)
            await asyncio.sleep(0)
        return "completed"

    app = XmigApp.for_watch(watch)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        text = app.screen_text()
        assert "balloon  seed 1  fixed" in text and "destination VERIFIED" in text
        await pilot.press("q")
    assert app.return_value == ["completed"]


@pytest.mark.parametrize("size", SIZES)
async def test_compare_side_by_side_highlights_what_differs(size):
    scen = load_scenario(EX / "balloon.yaml")
    app = XmigApp.for_compare(scen, [RunOptions(behaviour=b) for b in ("fixed", "pre-fix")],
                              ["fixed", "pre-fix"], speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        rows = dict(app.compare.rows())
        assert rows["missing"] == ["0", "42,576"]
        assert rows["XTAB entries"][0] != rows["XTAB entries"][1]
        text = app.compare_text()
        assert "fixed" in text and "pre-fix" in text and "42,576" in text
        assert shown(app, "map0") and shown(app, "map1")
        assert "missing 42,576" in app.query_one("#map1").plain()
        await pilot.press("q")
    fixed, prefix = app.return_value
    assert fixed.verify.ok and not prefix.verify.ok


@pytest.mark.parametrize("behaviour,says", [
    ("pre-fix", "p2m_remove_page, pre-fix: 3,357 were dirty and 3,357 keep their bits: the next pass "
                "sends them as XTAB"),
    ("fixed", "p2m_remove_page, fixed: 3,357 were dirty and are marked clean"),
])
def test_the_balloon_caption_says_what_the_call_site_did(behaviour, says):
    events, _ = recorded("balloon.yaml", behaviour)
    view = RunView()
    caps = [c for c in (view.feed(ev) for ev in events) if c is not None]
    inflate = next(c for c in caps if c.text.startswith("balloon done: 65,536 GFNs left the P2M "
                                                        "(decrease_reservation)"))
    assert inflate.interesting and says in inflate.text
    assert f"{inflate.t:.2f}" == "3.49"


def test_compare_table_explains_why_pre_fix_looks_cheaper():
    from tests.xmig_process import xmig

    out = xmig("compare", "--guest", EX / "balloon.yaml")
    text = " ".join(out.stdout.split())
    assert "pre-fix looks cheaper (88,144 fewer data pages" in text
    assert "because it skipped pages: 42,576 never reached the destination (missing)" in text


async def test_a_late_watch_says_so_then_learns_the_runs_names(prefix_run):
    from migrate.events import RunStarted, RunSummary

    events, _ = prefix_run
    late = [ev for ev in events if not isinstance(ev, RunStarted)]
    start = next(i for i, ev in enumerate(late) if isinstance(ev, PassStarted) and ev.iteration == 2)
    assert any(isinstance(ev, RunSummary) for ev in late)

    async def watch(listener):
        for ev in late[start:]:
            listener(ev)
            await asyncio.sleep(0)
        return "completed"

    app = XmigApp.for_watch(watch, guided=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.paused)
        assert "joined after the start" in app.query_one("#header").plain()
        app.guided = False
        await pilot.press("space")
        await until(pilot, lambda: app.done)
        head = app.query_one("#header").plain()
        assert "joined after the start" not in head and "balloon  seed 1  pre-fix" in head
        await pilot.press("q")


@pytest.mark.mqtt
async def test_watch_app_over_a_real_broker(mqtt_broker):
    from migrate import actors
    from migrate.cli.broker import watch_run

    from tests.transport.test_mqtt_run import cfg_for, scenario, start_actor_tasks

    sc = scenario("idle")
    cfg = cfg_for(mqtt_broker)
    subscribed = asyncio.Event()
    app = XmigApp.for_watch(lambda listener: watch_run(cfg, "app", listener=listener, ready=subscribed))
    async with app.run_test(size=(80, 24)) as pilot:
        await asyncio.wait_for(subscribed.wait(), 10)
        hv, g = await start_actor_tasks(cfg, "app", sc)
        await actors.remote_run(sc, RunOptions(), broker=cfg, run_id="app")
        await until(pilot, lambda: app.done)
        head = app.query_one("#header").plain()
        assert f"{sc.name}  seed {sc.seed}" in head and "destination VERIFIED" in head
        await pilot.press("q")
    assert app.return_value == ["completed"]
    await asyncio.gather(hv, g)


# ----------------------------------------------------------------------------- the tracked page


GFN = 0x30060        # in balloon.yaml's ballooned region: out at t=3 s, back at t=9.25 s


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _story_of(events) -> list[str]:
    from migrate.events.track import PageStory

    story = PageStory([GFN])
    for ev in events:
        story(ev)
    return [text for _, text in story.lines[GFN]]


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_track_panel_tells_the_pages_story_as_explain_does(size, tmp_path):
    """``run --track``: the story panel shows the lines ``xmig explain`` prints for a
    GFN the balloon takes out and gives back; beside the map on a big terminal, behind
    ``t`` on a small one. A replay of the recorded run shows the same panel."""
    from migrate.events.log import EventRecorder, read_event_log

    log = tmp_path / "run.events"
    rec = EventRecorder(log, {})
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix", track=(GFN,)),
                          speed=None, listeners=(rec,))
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        rec.close()
        small = size[0] < 120
        assert shown(app, "map") and shown(app, "story") is not small
        if small:
            await pilot.press("t")
            await pilot.pause(0.2)
            assert shown(app, "story") and not shown(app, "map") and not shown(app, "table")
            assert "t: back to the map" in app.query_one("#story").border_title
        panel = app.query_one("#story")
        text = _flat(panel.plain())
        assert panel.border_title.startswith("GFN 0x30060: its story")
        lines = _story_of(log_events := read_event_log(log).events)
        assert lines[-1].startswith("destination: MISSING")
        assert _flat(lines[-1]) in text
        assert "t=10.855" in text
        if not small:                  # room for the whole story, pre-fix's miss in it
            for line in lines:
                assert _flat(line) in text
            assert "NOT marked dirty (guest_physmap_add_entry is pre-fix)" in text
            assert "balloon inflate (decrease_reservation): P2M remove by p2m_remove_page" in text
        else:
            await pilot.press("t")
            await pilot.pause(0.1)
            assert shown(app, "map") and not shown(app, "story")
        await pilot.press("q")

    app = XmigApp.for_replay(log_events, speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        if small:
            await pilot.press("t")
            await pilot.pause(0.2)
        assert _flat(app.query_one("#story").plain()) == text
        await pilot.press("q")


async def test_no_track_no_story_panel_and_no_t_key(fixed_run):
    events, _ = fixed_run
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: app.done)
        assert not shown(app, "story") and shown(app, "map")
        await pilot.press("t")
        await pilot.pause(0.1)
        assert not shown(app, "story")
        assert app.screen.check_action("story", ()) is False
        await pilot.press("q")


@pytest.mark.parametrize("behaviour,says", [
    ("pre-fix", "guest_physmap_add_entry, pre-fix: 65,536 get no dirty bit: lost unless written after the "
                "next CLEAN"),
    # the deflate spans a CLEAN: pass 4 listed 27,525 of them before the move was done
    ("fixed", "guest_physmap_add_entry, fixed: 65,536 dirty bits set: the first CLEAN after each addition "
              "lists it"),
])
def test_the_deflate_caption_says_what_the_call_site_did(behaviour, says):
    events, _ = recorded("balloon.yaml", behaviour)
    view = RunView()
    caps = [c for c in (view.feed(ev) for ev in events) if c is not None]
    deflate = next(c for c in caps if c.text.startswith("balloon done: 65,536 GFNs joined the P2M"))
    assert deflate.interesting and says in deflate.text
    assert not any("(Domain now suspended)" in c.text for c in caps)


@pytest.mark.parametrize("behaviour,says", [
    ("pre-fix", "pass 3: the CLEAN gave dirty_count 19,206. the 13 GFNs populate_physmap added are listed, "
                "though pre-fix did not mark them: each kept the dirty bit it had when the balloon took it"),
    ("fixed", "GFNs populate_physmap added are listed: the fix marked them dirty"),
])
def test_the_pass_caption_credits_the_fix_only_when_it_ran(behaviour, says):
    """balloon-stale.yaml: pages ballooned out and back in before pass 3's CLEAN. Under
    pre-fix a few are listed anyway, by the bits the inflate left set; the caption must not
    say the fix marked them. (With the compact layout's shorter pass 1: the balloon moves
    between pass 2's CLEAN and pass 3's, which is the case this caption handles.)"""
    events, _ = recorded("balloon-stale.yaml", behaviour, "compact")
    view = RunView()
    caps = [c.text for c in (view.feed(ev) for ev in events) if c is not None]
    assert any(says in c for c in caps), [c for c in caps if "listed" in c]
    if behaviour == "pre-fix":
        assert not any("the fix marked" in c for c in caps)


@pytest.mark.parametrize("behaviour", ["fixed", "pre-fix"])
def test_pod_boot_balloon_caption_counts_what_the_report_counts(behaviour):
    """pod-boot's deflate happens in one tick: the guest's note that the move is done
    comes before the hypervisor's events of it, and the PoD demand-populates the saver's
    type queries make are not the balloon's. The caption waits for the move's own
    events and tells exactly the report's numbers."""
    import asyncio

    from migrate.events import EventBus
    from migrate.run.runner import RunOptions, run_scenario
    from migrate.run.scenario import load_scenario
    from migrate.ui.gfnmap import GfnMap
    from migrate.ui.narration import Narrator

    bus = EventBus()
    gfnmap = GfnMap(max_cells=4096)
    narrator = Narrator(gfnmap)
    bus.subscribe(gfnmap.on_event)
    bus.subscribe(narrator)
    res = asyncio.run(run_scenario(load_scenario(Path(__file__).resolve().parents[2] / "examples" / "pod-boot.yaml"),
                                   RunOptions(behaviour=behaviour), bus=bus))
    start = next(c.text for c in narrator.captions if c.text.startswith("migration of"))
    assert "0 RAM pages and 262,144 populate-on-demand entries" in start
    done = [c.text for c in narrator.captions if c.text.startswith("balloon done")]
    assert len(done) == 1
    if behaviour == "fixed":
        n = res.pages["set_by_fix"]["guest_physmap_add_entry"]
        assert f"fixed: {n:,} dirty bits set" in done[0]
    else:
        n = res.pages["unmarked_additions"]
        assert f"pre-fix: {n:,} get no dirty bit" in done[0]
    assert n == 32768


def test_a_run_with_mixed_call_sites_is_narrated_site_by_site():
    """xen_behaviour as a mapping: the inflate goes through p2m_remove_page (fixed here),
    the deflate through guest_physmap_add_entry (pre-fix here). Each caption tells its
    own site's behaviour, read from the run's RunStarted, not 'mixed' for all."""
    sites = {"p2m_remove_page": "fixed", "set_typed_p2m_entry": "fixed",
             "pod_decrease_reservation": "fixed", "guest_physmap_add_entry": "pre-fix"}
    events = []
    bus = EventBus()
    bus.subscribe(events.append)
    asyncio.run(run_scenario(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour=sites), bus=bus))
    view = RunView()
    caps = [c.text for c in (view.feed(ev) for ev in events) if c is not None]
    assert view.state.behaviour == "mixed"
    assert view.state.is_fixed("p2m_remove_page") and not view.state.is_fixed("guest_physmap_add_entry")
    assert any(c.startswith("migration of 'balloon' starts (mixed: p2m_remove_page fixed, ") for c in caps)
    inflate = next(c for c in caps if c.startswith("balloon inflates"))
    deflate = next(c for c in caps if c.startswith("balloon deflates"))
    assert "fixed: any of them that are dirty are marked clean" in inflate
    assert "pre-fix: none is marked dirty" in deflate
    assert any("none of the 65,536 ballooned GFNs is listed: the fix cleaned their bits" in c for c in caps)


async def test_a_finished_runs_verdict_keeps_the_header_at_two_lines_and_the_maps_scale():
    """At 80x24 the verdict (``destination DIVERGED: 42,576 missing, 0 stale``) takes the
    header's second line whole: the status hint is dropped rather than wrapped to a third
    line, which would take a row from the map and double its GFNs per glyph at the end."""
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=None)
    scales = []
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: bool(app.views[0].state.rounds))
        await pilot.pause(0.2)
        scales.append(app.query_one("#map").frame.cell)
        await until(pilot, lambda: app.done)
        await pilot.pause(0.2)
        header = app.query_one("#header").plain().rstrip("\n").splitlines()
        scales.append(app.query_one("#map").frame.cell)
    assert len(header) == 2, header
    assert "destination DIVERGED: 42,576 missing, 0 stale" in header[1]
    assert scales[0] == scales[1]
