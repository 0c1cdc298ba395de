"""``j`` on the map: a small prompt for a GFN to centre at one GFN a glyph.

The GFN is checked against the saver's address space ``[0, p2m_size)`` (``p2m_size``
as ``xg_sr_save.c``'s ``x86_hvm_setup`` fixes it); a bad entry says what was expected
and stays open.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from migrate.ui.mapview import parse_gfn


class JumpScreen(ModalScreen[int | None]):
    """Ask for a GFN (hex with 0x, or decimal); dismiss with it, or None on escape."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    JumpScreen { align: center middle; }
    JumpScreen > Vertical { width: 50; height: auto; border: round $accent; padding: 0 1;
                            background: $panel; }
    JumpScreen #jump-error { color: $error; height: auto; }
    """

    def __init__(self, p2m_size: int) -> None:
        super().__init__()
        self.p2m_size = p2m_size

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"jump to GFN (0x0-{max(self.p2m_size - 1, 0):#x}; hex with 0x, or decimal)")
            yield Input(placeholder="0x30060", id="jump-gfn")
            yield Static("", id="jump-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            gfn = parse_gfn(event.value, self.p2m_size)
        except ValueError as e:
            self.query_one("#jump-error", Static).update(str(e))
            return
        self.dismiss(gfn)

    def action_cancel(self) -> None:
        self.dismiss(None)


__all__ = ["JumpScreen"]
