"""Make docs/lab.md, the lab handout, from real runs of the commands it asks students
to type. Run from the repository's root, with xmig installed (pip install -e .):

    python docs/make_lab.py            # rewrite docs/lab.md (about 20 s)
    python docs/make_lab.py --check    # exit 1, naming the first line that differs

Every number in the handout comes from these runs, in a scratch folder, exactly as a
student would make them: `xmig examples copy balloon`, two `xmig run`s, `xmig
explain`, a 14-run `xmig sweep` and `xmig replay --export`. When the engine, the
examples or the captions change, run it again and commit the page;
tests/cli/test_lab_handout.py fails while the page and the runs disagree.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "docs" / "lab.md"
TRACK = "0x30060"
AXIS = "guest.balloon.schedule[1].at"
SWEEP = f"""\
name: lab-deflate
base: balloon.yaml                # beside this file, in examples/
axes:
  {AXIS}: [5s, 7s, 8s, 9s, 9.25s, 10s, 11s]
  migration.xen_behaviour: [fixed, pre-fix]
"""


def xmig(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``xmig ARGS`` in ``folder`` as a script runs it (piped: plain text, 100 columns)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env.update(COLUMNS="100", PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, "-m", "migrate", *args], cwd=folder, env=env, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=600)
    if res.returncode not in (0, 1):
        raise SystemExit(f"make_lab: xmig {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def n(v) -> str:
    return f"{int(v):,}"


def figures(rep: dict, code: int) -> dict[str, str]:
    """One behaviour's column of exercise 1's table."""
    rounds = rep["rounds"]
    live = [r for r in rounds if r["phase"] == "live"]
    return {
        "live passes": str(len(live)),
        "data pages sent": n(rep["totals"]["pages_sent"]),
        "XTAB entries, pass 1": n(rounds[0]["xtab_sent"]),
        "XTAB entries after pass 1 (wasted)": n(sum(r["xtab_sent"] for r in rounds[1:])),
        "stream size (MiB)": f"{rep['totals']['bytes'] / 2**20:,.1f}",
        "downtime (ms)": f"{rep['totals']['downtime_s'] * 1000:.0f}",
        "pages missing at the destination": n(rep["verify"]["missing_pages"]),
        "pages stale at the destination": n(rep["verify"]["stale_pages"]),
        "exit code": str(code),
    }


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def measure(folder: Path) -> dict:
    """Run everything the handout asks for; return what it quotes."""
    xmig(folder, "examples", "copy", "balloon")
    runs = {}
    for b in ("fixed", "pre-fix"):
        res = xmig(folder, "run", "--guest", "examples/balloon.yaml", "-b", b, "--no-dashboard",
                   "--report", f"{b}.json", "--record", f"{b}.events", "--track", TRACK)
        runs[b] = figures(json.loads((folder / f"{b}.json").read_text()), res.returncode)
    stories = {b: xmig(folder, "explain", f"{b}.events", "--gfn", TRACK).stdout.strip().splitlines()
               for b in ("fixed", "pre-fix")}
    (folder / "examples" / "lab-deflate.yaml").write_text(SWEEP)
    xmig(folder, "sweep", "examples/lab-deflate.yaml", "--out", "deflate.csv", "--workers", "2")
    with open(folder / "deflate.csv", newline="") as f:
        sweep = list(csv.DictReader(f))
    shots = xmig(folder, "replay", "pre-fix.events", "--export", "slides", "--at", "pass:2", "--at", "deflate",
                 "--at", "end").stdout.split()
    pass2 = (folder / "slides" / "pass2-80x24.txt").read_text().split("\n\n")   # the caption wraps
    return {"runs": runs, "stories": stories, "sweep": sweep,
            "shots": [Path(s).name for s in shots if s.endswith(".svg")],
            "pass2_caption": " ".join(next((p for p in pass2 if "pass 2 done" in p), "").split())}


def render(m: dict) -> str:
    fx, pf = m["runs"]["fixed"], m["runs"]["pre-fix"]
    t1 = table(["", "fixed", "pre-fix"], [[k, fx[k], pf[k]] for k in fx])
    by = {(r[AXIS], r["behaviour"]): r for r in m["sweep"]}
    ats = list(dict.fromkeys(r[AXIS] for r in m["sweep"]))
    t3 = table(["deflate at", "fixed: missing", "fixed: stale", "pre-fix: missing", "pre-fix: stale",
                "pre-fix: XTAB after pass 1"],
               [[a, n(by[a, "fixed"]["missing"]), n(by[a, "fixed"]["stale"]), n(by[a, "pre-fix"]["missing"]),
                 n(by[a, "pre-fix"]["stale"]), n(by[a, "pre-fix"]["xtab_after_pass1"])] for a in ats])
    lost = [a for a in ats if int(by[a, "pre-fix"]["missing"]) > 0]
    stale = [a for a in ats if int(by[a, "pre-fix"]["stale"]) > 0]
    no_waste = [a for a in ats if int(by[a, "pre-fix"]["xtab_after_pass1"]) == 0]
    waste = [a for a in ats if int(by[a, "pre-fix"]["xtab_after_pass1"]) > 0]
    wasted = n(max((int(by[a, "pre-fix"]["xtab_after_pass1"]) for a in ats), default=0))
    fate = {b: m["stories"][b][-1].split("destination:", 1)[-1].strip() for b in ("fixed", "pre-fix")}
    return f"""\
<!-- Generated by docs/make_lab.py from real runs; do not edit by hand. To refresh every
number after a change: python docs/make_lab.py (tests/cli/test_lab_handout.py checks it). -->
# Lab: the P2M/log-dirty fix, in numbers

A two-hour lab for a class that has seen the walk-through ([A walk through the fix](walkthrough.md)).
Each exercise gives the commands to type and the numbers you should get: xmig is
deterministic, so the same seed gives the same numbers on every machine. If yours
differ, your xmig is another version: compare with a classmate before you compare
with this page.

Set up a folder to work in:

```sh
pip install xmig            # or: pip install -e . in a checkout
mkdir lab && cd lab
xmig examples copy balloon  # writes examples/balloon.yaml
```

`examples/balloon.yaml` is a 1 GiB guest migrated from t = 1 s over 1 Gbit/s. Its
balloon gives back the top 256 MiB at t = 3 s, while pass 1 runs, and takes it back at
t = 9.25 s, during pass 3.

## Exercise 1: the same run, with and without the fix

```sh
xmig run --guest examples/balloon.yaml -b fixed   --report fixed.json   --record fixed.events   --track {TRACK}
xmig run --guest examples/balloon.yaml -b pre-fix --report pre-fix.json --record pre-fix.events --track {TRACK}
```

Fill in this table from the two summaries (or the JSON reports), then check it:

{t1}

1. Pass 1 walks every GFN below `p2m_size`. Both runs send {fx["XTAB entries, pass 1"]} XTAB entries
   in it, while the balloon gave back 65,536 pages: where do the other
   {int(fx["XTAB entries, pass 1"].replace(",", "")) - 65536} come from? (Hint: the GFN map's legend.)
2. After pass 1, `pre-fix` queries {pf["XTAB entries after pass 1 (wasted)"]} GFNs that are no longer in the
   P2M, and `fixed` queries {fx["XTAB entries after pass 1 (wasted)"]}. Which call site of the fix clears
   their dirty bits, and when were those bits set?
3. `pre-fix` sends fewer data pages than `fixed` ({pf["data pages sent"]} against {fx["data pages sent"]})
   and still misses {pf["pages missing at the destination"]} pages. Explain why sending less here is a bug, not a saving.
4. What does the exit code tell a script that migrates guests?

## Exercise 2: one page's story

GFN {TRACK} is in the ballooned region: given back at 3 s, taken back at 9.25 s and
written soon after.

```sh
xmig explain pre-fix.events --gfn {TRACK}
xmig explain fixed.events   --gfn {TRACK}
```

Expected last lines: under `pre-fix`, *destination: {fate["pre-fix"]}*; under `fixed`,
*destination: {fate["fixed"]}*.

1. Under `pre-fix`, find the line where the page comes back. Which function adds it to
   the P2M, and why does the guest's next write not set a dirty bit?
2. Under `fixed`, which pass sends it after it comes back?

## Exercise 3: when does the deflate hurt? (a sweep)

Save this as `examples/lab-deflate.yaml`, beside `balloon.yaml`:

```yaml
{SWEEP.rstrip()}
```

```sh
xmig sweep examples/lab-deflate.yaml --out deflate.csv --summary '{AXIS}'
```

Fourteen runs, seed 1 (a few seconds on two cores). Expected:

{t3}

1. `fixed` never loses a page. Under `pre-fix`, pages are lost only for a deflate at
   {", ".join(lost) or "none of these times"}. Which pass is running at those times, and at 5 s and 7 s?
2. Why does a deflate at 10 s or 11 s lose nothing, even under `pre-fix`?
   (Hint: when was the domain suspended in exercise 1?)
3. Stale pages under `pre-fix` appear at {", ".join(stale) or "none of these times"}: what is the
   difference between a missing page and a stale one, for the destination?
4. The XTAB queries after pass 1 are 0 for a deflate at {", ".join(no_waste) or "no time here"} and
   {wasted} from {(waste or ["never"])[0]} on. Why does an early deflate hide `pre-fix`'s wasted work?
   (Hint: what are those GFNs again when pass 2 queries them?)

## Exercise 4: slides for your report

```sh
xmig replay pre-fix.events --export slides --at pass:2 --at deflate --at end
```

writes {", ".join(f"`{s}`" for s in m["shots"])} (and a `.txt` of each) into `slides/`,
without a terminal. The frame at the end of pass 2 says:

> {m["pass2_caption"].strip()}

Open the SVGs in a browser. In the interactive app (`xmig replay pre-fix.events`), the key
`s` saves the screen you are looking at into `xmig-slides/`. No Python at hand? Your
lecturer can serve the app to your browser: see [Slides and the browser](browser.md).
"""


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="xmig-lab-") as tmp:
        page = render(measure(Path(tmp)))
    if "--check" in argv:
        old = LAB.read_text(encoding="utf-8") if LAB.exists() else ""
        if old != page:
            diff = difflib.unified_diff(old.splitlines(), page.splitlines(), "docs/lab.md", "the runs today", n=0,
                                        lineterm="")
            print("\n".join(list(diff)[:20]))
            print("docs/lab.md is out of date: run python docs/make_lab.py and commit it", file=sys.stderr)
            return 1
        return 0
    LAB.write_text(page, encoding="utf-8")
    print(f"wrote {LAB}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
