"""What a lecturer needs from the app (issue 23): time to read each event of interest,
``?`` pausing the run, ``[``/``]`` stepping back over a live run, and the patch's call
site beside the caption with its mark highlighted (fixed) or struck (pre-fix).

The holds are asserted as requested (a fake clock: no wall time is measured)."""

from __future__ import annotations


import numpy as np
import pytest

from hypervisor.abi import LogDirtyEffect
from migrate.events import BalloonMoved, BalloonTarget, EventBus, MemoryOp
from migrate.run.runner import RunOptions, run_scenario
from migrate.run.scenario import load_scenario
from migrate.ui.app import HelpScreen, XmigApp
from migrate.ui.history import History
from migrate.ui.model import RunView
from migrate.ui.patch import MARK_FIXED, MARK_PRE_FIX, SITES, PatchPanel, site_line, site_lines
from migrate.ui.playback import READ_S, Playback

from .test_app import EX, recorded, until
from tests.ui.fake_clock import FakeClock


def on_fake_clock(app: XmigApp) -> FakeClock:
    clk = FakeClock(1000.0)
    app.playback._clock = clk
    app.playback._sleep = clk.sleep
    return clk


# ----------------------------------------------------------------------------- time to read


async def test_a_hold_to_read_stops_the_virtual_clock_for_read_s_and_n_gives_it_back():
    clk = FakeClock(1000.0)
    pb = Playback(0.4, clock=clk, sleep=clk.sleep)
    await pb.pace(1.0)                       # anchors
    assert pb.hold_to_read(1.0, "balloon inflates") == READ_S == 3.0
    await pb.pace(1.0)                       # the engine at the same virtual time waits the hold
    assert clk.sleeps == [pytest.approx(READ_S)]
    pb.hold_to_read(1.0, "balloon done")
    pb.cut_read()                            # n: the person moved on
    await pb.pace(1.0)
    assert clk.sleeps == [pytest.approx(READ_S)]     # nothing more to wait
    await pb.reading()                       # and the view does not wait either
    assert [what for _, what, _ in pb.reads] == ["balloon inflates", "balloon done"]


async def test_a_pause_takes_over_from_a_hold_to_read():
    """Paused 1 s into a hold for 10 s: the run resumes when the pause ends, not 2 s later."""
    clk = FakeClock(1000.0)
    pb = Playback(0.4, clock=clk, sleep=clk.sleep)
    await pb.pace(1.0)
    pb.hold_to_read(1.0, "x")
    clk.now += 1.0
    pb.pause()
    clk.now += 10.0
    pb.resume()
    await pb.pace(1.0)
    assert clk.sleeps == []


async def test_flat_out_nothing_is_held_to_read():
    clk = FakeClock(1000.0)
    pb = Playback(None, clock=clk, sleep=clk.sleep)
    assert pb.hold_to_read(1.0, "x") == 0.0
    await pb.reading()
    assert pb.reads == [] and clk.sleeps == []


@pytest.mark.parametrize("speed", [0.4, None], ids=["default-speed", "max"])
async def test_each_event_of_interest_asks_read_s_on_screen_at_a_pace_and_nothing_flat_out(speed):
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=speed)
    on_fake_clock(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.done, timeout=120)
        interesting = [c for c in app.views[0].narrator.captions if c.interesting]
        reads = app.playback.reads
        await pilot.press("q")
    assert len(interesting) >= 10
    if speed is None:
        assert reads == []
    else:
        # one hold per event of interest, in order, each READ_S wall seconds
        assert [(t, what) for t, what, _ in reads] == [(c.t, c.text) for c in interesting]
        assert {s for _, _, s in reads} == {READ_S}
        assert any("65,536 get no dirty bit" in what for _, what, _ in reads)
        assert any("deflates" in what for _, what, _ in reads)


async def test_guided_pauses_instead_of_holding():
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="fixed"), speed=0.4,
                          guided=True)
    on_fake_clock(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.paused)
        assert app.playback.reads == []          # paused at the event: nothing to hold
        await pilot.press("q")


async def test_help_pauses_the_run_while_shown_and_resumes_it_when_closed():
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=0.4)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.views[0].events_seen > 0)
        assert not app.paused
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        assert isinstance(app.screen, HelpScreen)
        assert app.paused and app.playback.paused        # the engine waits on the playback
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)
        assert not app.paused and not app.playback.paused
        # paused before: the help leaves it paused
        await pilot.press("space")
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.paused and app.playback.paused
        await pilot.press("q")


# ----------------------------------------------------------------------------- stepping


def test_history_keeps_one_compact_snapshot_per_event_of_interest_or_pass():
    events, _ = recorded("balloon.yaml", "pre-fix")
    view, hist = RunView(), History()
    interesting = 0
    for ev in events:
        cap = view.feed(ev)
        interesting += bool(cap is not None and cap.interesting)
        hist.take(view, ev, cap)
    assert interesting <= len(hist) <= interesting + 6       # + the passes' starts not told
    assert hist.nbytes() < 64 * 1024 * len(hist)              # packed, not the raw view
    # a snapshot is the view as it stood: the inflate's, before pass 2 sent anything
    step = next(s for s in hist.steps if s.label.startswith("balloon done: 65,536 GFNs left"))
    old = step.view()
    assert old.caption.text == step.label
    assert old.caption.t == step.t and not old.state.rounds[1:]


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_brackets_step_back_over_a_live_run_and_past_the_newest_go_live(size):
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="pre-fix"), speed=None,
                          guided=True)
    async with app.run_test(size=size) as pilot:
        for _ in range(5):                   # start, inflate, inflate done, XTAB, pass 2
            await until(pilot, lambda: app.paused)
            await pilot.press("space")
        await until(pilot, lambda: app.paused)
        live = app.views[0]
        live_caption = live.caption.text
        steps = app.stepping.history.steps
        n = len(steps)
        assert n >= 5
        await pilot.press("left_square_bracket")
        await pilot.pause(0.1)
        assert app.paused and app.stepping.at is not None
        at = app.stepping.at
        shown = app.main.view
        assert shown is not live and shown.caption.text == steps[at].label
        assert steps[at].label in app.query_one("#caption").plain().replace("\n", " ") or size[0] < 100
        assert "STEP" in app.query_one("#header").plain()
        for _ in range(n + 2):               # back to the first: it stays there
            await pilot.press("left_square_bracket")
        await pilot.pause(0.1)
        assert app.stepping.at == 0
        assert "migration of 'balloon' starts" in app.main.view.caption.text
        assert app.main.view.state.rounds == []          # the table as it stood: no pass yet
        assert app.views[0].caption.text == live_caption     # the live run did not move
        for _ in range(n):                   # forth, past the newest: live, playing
            await pilot.press("right_square_bracket")
        await pilot.pause(0.1)
        assert app.stepping.at is None and app.main.view is app.views[0]
        assert not app.paused or app.views[0].caption.text != live_caption
        await pilot.press("q")


async def test_space_while_stepping_goes_back_to_the_live_view():
    app = XmigApp.for_run(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour="fixed"), speed=None,
                          guided=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.paused)
        await pilot.press("space")
        await until(pilot, lambda: app.paused)
        await pilot.press("left_square_bracket")
        await pilot.pause(0.1)
        assert app.stepping.browsing
        await pilot.press("space")
        await pilot.pause(0.1)
        assert not app.stepping.browsing and app.main.view is app.views[0]
        await pilot.press("q")


# ----------------------------------------------------------------------------- the patch panel


def test_every_site_has_its_pseudocode_and_its_mark():
    for site, p in SITES.items():
        assert p.site.value == site
        for fixed, style in ((True, MARK_FIXED), (False, MARK_PRE_FIX)):
            for text in (site_lines(site, fixed), site_line(site, fixed)):
                marked = [text.plain[s.start:s.end] for s in text.spans if str(s.style) == style]
                assert len(marked) == 1 and "mark" in marked[0]


def _feed(view: RunView, events) -> list:
    return [c for c in (view.feed(ev) for ev in events) if c is not None]


def test_a_pod_inflate_names_pod_decrease_reservation():
    """The site comes from the hypervisor's own account of the op (LogDirtyEffect.site)."""
    g = np.arange(0x100, 0x110, dtype=np.int64)
    eff = LogDirtyEffect("pod_decrease_reservation", "remove", True, g, g[:4], cleared=4)
    caps = _feed(RunView(), [
        BalloonTarget(1.0, current_pages=100, target_pages=84, previous_pages=100, scheduled_at=1.0,
                      reason="schedule"),
        MemoryOp(1.1, op="decrease_reservation", nr=16, rc=16, gfns=g, sites=(eff,)),
        BalloonMoved(1.1, current_pages=84, target_pages=84, direction="inflate", pages=16, batches=1),
    ])
    done = next(c for c in caps if c.text.startswith("balloon done"))
    assert done.sites == ("pod_decrease_reservation",)


def _mark_segments(panel: PatchPanel, site: str) -> list:
    """The rendered segments (as drawn on the terminal) that carry ``site``'s mark."""
    marks = {SITES[site].mark, SITES[site].short}
    return [seg for y in range(panel.size.height) for seg in panel.render_line(y)
            if seg.text.strip() and any(seg.text.strip() in m for m in marks) and "mark" in seg.text]


def _highlighted(seg) -> bool:
    bg = seg.style.bgcolor          # green: the standard colour 2, however the terminal names it
    return bg is not None and (bg.name == "green" or bg.number == 2) and bool(seg.style.bold)


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_the_patch_beside_the_caption_highlights_fixed_and_strikes_pre_fix(size):
    """A run whose sites are mixed: the inflate's p2m_remove_page is fixed (its mark
    highlighted), the deflate's guest_physmap_add_entry is pre-fix (struck)."""
    sites = {"p2m_remove_page": "fixed", "set_typed_p2m_entry": "fixed",
             "pod_decrease_reservation": "fixed", "guest_physmap_add_entry": "pre-fix"}
    events = []
    bus = EventBus()
    bus.subscribe(events.append)
    await run_scenario(load_scenario(EX / "balloon.yaml"), RunOptions(behaviour=sites), bus=bus)
    app = XmigApp.for_replay(events, speed=None)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.done)
        panel = app.query_one(PatchPanel)
        cap = app.query_one("#caption")
        if size == (80, 24):
            # folds to one line under the caption, full width
            assert panel.region.height == 1 and panel.region.y == cap.region.bottom
        else:
            # a box beside the caption
            assert panel.region.height == 8 and panel.region.x >= cap.region.right
            assert panel.region.y == cap.region.y
        await pilot.press("2")               # pass 2 starts: the fix cleaned the inflate's bits
        await until(pilot, lambda: app.paused and app.views[0].state.current.iteration == 2)
        assert "p2m_remove_page" in panel.plain()
        segs = _mark_segments(panel, "p2m_remove_page")
        assert segs and all(_highlighted(s) and not s.style.strike for s in segs)
        await pilot.press("5")               # after the deflate through pre-fix guest_physmap_add_entry
        await until(pilot, lambda: app.paused and app.views[0].state.current.iteration == 5)
        assert "guest_physmap_add_entry" in panel.plain()
        segs = _mark_segments(panel, "guest_physmap_add_entry")
        assert segs and all(s.style.strike and not _highlighted(s) for s in segs)
        await pilot.press("q")
