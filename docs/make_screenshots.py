"""Make the README's screenshots of the app: examples/balloon.yaml, pre-fix, following
GFN 0x30060 (--track), at the end of pass 2, at 80x24 and 160x50. Run from the
repository's root:

    python docs/make_screenshots.py

It does what a lecturer preparing slides would: records the run with ``xmig run
--record`` and draws the frames headless with ``xmig replay --export --at pass:2``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XMIG = [sys.executable, "-m", "migrate.cli.main"]
SIZES = ("80x24", "160x50")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "run.events"
        subprocess.run([*XMIG, "run", "--guest", str(ROOT / "examples" / "balloon.yaml"), "--behaviour", "pre-fix",
                        "--track", "0x30060", "--no-dashboard", "--record", str(events)],
                       check=False, stdout=subprocess.DEVNULL)      # exit 1: the pre-fix run diverges
        frames = Path(tmp) / "frames"
        sizes = [a for s in SIZES for a in ("--size", s)]
        subprocess.run([*XMIG, "replay", str(events), "--export", str(frames), "--at", "pass:2", *sizes],
                       check=True, stdout=subprocess.DEVNULL)
        for size in SIZES:
            src = next(frames.glob(f"pass-2-{size}.svg"), None) or next(frames.glob(f"*{size}.svg"))
            out = ROOT / "docs" / f"app-{size}-prefix-pass2.svg"
            shutil.copyfile(src, out)
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
