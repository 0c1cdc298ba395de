"""The patch beside the caption: the call site that just acted, as pseudocode, with its mark.

Seed patch 98fccdf0ac ("x86/mm: update log-dirty bitmap when manipulating P2M") adds one
log-dirty mark at each of four call sites: a GFN leaving the P2M is marked clean in
``p2m_remove_page`` and ``set_typed_p2m_entry`` (``xen/arch/x86/mm/p2m.c``) and in
``p2m_pod_decrease_reservation`` (``xen/arch/x86/mm/p2m-pod.c``); a GFN joining it is
marked dirty in ``guest_physmap_add_entry`` (p2m.c). ``hypervisor/marks.py`` is the one
home of those marks in the model; this module only *shows* them: for each site a few
lines of the project's own pseudocode (what the site does, in plain words, not Xen's
code), the line the patch adds set apart. Under ``fixed`` (for that site) that line is
highlighted; under ``pre-fix`` it is struck through, because that run's hypervisor does
not make it.

Which site acted comes from the events (``MemoryOp.sites``, each ``LogDirtyEffect.site``),
through the narrator: each interesting caption names the sites whose work it shows
(``Caption.sites``). The panel shows the newest caption's sites; at 80x24 (any terminal
below 120x36) it folds to one line: the site and its mark, styled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from hypervisor.abi import FixSite
from migrate.ui.narration import Caption
from migrate.ui.panels import RunPanel

COMMIT = "98fccdf0ac"
#: the patch's line under ``fixed``: the mark is made
MARK_FIXED = "bold black on green"
#: ... and under ``pre-fix``: the mark is not made
MARK_PRE_FIX = "strike red"


@dataclass(frozen=True, slots=True)
class SitePatch:
    """One call site as the panel tells it: where it lives, who reaches it, what it does
    (``before`` and ``after`` the patch's line) and the patch's ``mark``."""

    site: FixSite
    source: str
    reached_by: str
    before: tuple[str, ...]
    mark: str
    after: tuple[str, ...] = ()
    short: str = ""          # the mark in a few words, for the one-line form


#: The four sites, in the project's own words.
SITES: dict[str, SitePatch] = {p.site.value: p for p in (
    SitePatch(FixSite.P2M_REMOVE_PAGE, "p2m.c", "decrease_reservation, remove_from_physmap",
              ("for every GFN of the extent:", "  point its entry at nothing (p2m_invalid)"),
              "  mark the GFN clean in the log-dirty bitmap",
              ("  hand its frame back to the domain heap",), "mark clean"),
    SitePatch(FixSite.SET_TYPED_P2M_ENTRY, "p2m.c", "an MMIO, foreign or grant mapping over RAM",
              ("look up the GFN's entry as it stands", "write the new type and frame in its place"),
              "if the old entry was RAM: mark the GFN clean",
              (), "mark clean if it was RAM"),
    SitePatch(FixSite.POD_DECREASE_RESERVATION, "p2m-pod.c", "decrease_reservation on a PoD guest",
              ("for every GFN of the extent:", "  a PoD entry: drop it (one fewer outstanding)",
               "  RAM while the cache is short: steal it for the cache"),
              "  mark the GFN clean in the log-dirty bitmap",
              (), "mark clean"),
    SitePatch(FixSite.GUEST_PHYSMAP_ADD_ENTRY, "p2m.c", "populate_physmap, add_to_physmap",
              ("for every GFN of the extent:", "  point its entry at the new frame (RAM)"),
              "  mark the GFN dirty in the log-dirty bitmap",
              ("  so the next CLEAN lists it and a pass sends it",), "mark dirty"),
)}


def mark_style(fixed: bool) -> str:
    return MARK_FIXED if fixed else MARK_PRE_FIX


def site_lines(site: str, fixed: bool) -> Text:
    """A site's pseudocode: its name and whether this run makes the mark, who reaches
    it, what it does, the patch's line (gutter ``+``) styled for the run."""
    p = SITES[site]
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(p.site.value, style="bold")
    t.append(f" ({p.source}): ", style="dim")
    t.append("fixed" if fixed else "pre-fix: mark not made", style="bold green" if fixed else "bold red")
    t.append(f"\n  from {p.reached_by}", style="dim italic")
    for line in p.before:
        t.append(f"\n  {line}")
    t.append("\n+ ", style="bold green" if fixed else "bold red")
    t.append(p.mark, style=mark_style(fixed))
    for line in p.after:
        t.append(f"\n  {line}")
    return t


def site_line(site: str, fixed: bool) -> Text:
    """The one-line form: commit, site, and the mark, styled as in the full form."""
    p = SITES[site]
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f"{COMMIT} ", style="dim")
    t.append(p.site.value, style="bold")
    t.append(": + ")
    t.append(p.short, style=mark_style(fixed))
    if not fixed:
        t.append(" (pre-fix)", style="red")
    return t


def acted(captions: list[Caption]) -> Caption | None:
    """The newest caption that names a call site (the one the panel shows)."""
    for cap in reversed(captions):
        if cap.sites:
            return cap
    return None


class PatchPanel(RunPanel):
    """The call site that acted at the latest event of interest, beside the caption:
    a box of pseudocode from 120x36, one line below it (``.small``). Its height never
    changes with what it shows, so the map below keeps its scale."""

    #: the one-line form is the screen's (``.small .patch``: height 1, no border)
    DEFAULT_CSS = "PatchPanel { width: 56; height: 8; border: round $accent; border-title-align: left; padding: 0 1; }"

    def shape(self) -> Any:
        return None

    def watch_version(self) -> None:
        cap = acted(self.view.narrator.captions)
        self.border_title = (f"the patch ({COMMIT})" if cap is None
                             else f"the patch at t={cap.t:.2f} s ({COMMIT})")
        super().watch_version()

    def _small(self) -> bool:
        return self.content_size.height <= 1

    def render(self) -> RenderableType:
        cap = acted(self.view.narrator.captions)
        small = self._small()
        if cap is None:
            return Text(f"{COMMIT}: no call site of the patch has acted yet", style="dim",
                        no_wrap=True, overflow="ellipsis")
        state = self.view.state
        if small:
            line = Text(no_wrap=True, overflow="ellipsis")
            for i, site in enumerate(cap.sites):
                if i:
                    line.append("; ")
                line.append_text(site_line(site, state.is_fixed(site)))
            return line
        return Group(*(site_lines(site, state.is_fixed(site)) for site in cap.sites))


__all__ = ["COMMIT", "MARK_FIXED", "MARK_PRE_FIX", "PatchPanel", "SITES", "SitePatch", "acted", "mark_style",
           "site_line", "site_lines"]
