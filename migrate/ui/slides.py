"""The app's key ``s``: the screen as it is now, saved as an SVG slide.

Xen has no counterpart; this is the teaching app's (``migrate/ui/app.py``) camera. In a
terminal the SVG goes to ``./xmig-slides/``; in a browser (``xmig serve``) Textual
delivers it as a download. ``migrate/ui/export.py`` draws the same screen from a
recording without a terminal.
"""

from __future__ import annotations

from pathlib import Path

SLIDES_DIR = "xmig-slides"          # where the key s saves, under the current directory


def _unused(path: Path) -> Path:
    """``path``, or ``stem-2.svg``, ``stem-3.svg``... if it is taken."""
    n = 2
    out = path
    while out.exists():
        out = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return out


class SlideKeys:
    """The app's key ``s``: save the screen as it is now as an SVG. In a terminal it
    goes to ``./xmig-slides/``; in a browser (``xmig serve``) the browser downloads it.
    A mixin of ``XmigApp``: it reads the app's ``views``, ``mode`` and ``size``."""

    def slide_name(self) -> str:
        cur = self.views[0].state.current if self.views else None
        t = max((float(v.state.t) for v in self.views), default=0.0)
        where = f"-pass{cur.iteration}" if cur is not None else ""
        w, h = self.size
        return f"xmig-{self.mode}{where}-t{t:.2f}s-{w}x{h}.svg"

    def action_save_slide(self) -> None:
        name = self.slide_name()
        if self.is_web:
            self.deliver_screenshot(filename=name)
            self.notify(f"slide {name}: your browser downloads it", timeout=4)
            return
        try:
            out = _unused(Path.cwd() / SLIDES_DIR / name)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(self.export_screenshot(title=f"xmig {self.mode}"), encoding="utf-8")
        except OSError as exc:
            self.notify(f"could not save the slide: {exc}", severity="error", timeout=6)
            return
        self.notify(f"saved {out}", timeout=4)


__all__ = ["SLIDES_DIR", "SlideKeys"]
