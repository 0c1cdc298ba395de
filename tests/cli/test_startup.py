"""What ``xmig --help`` loads: only the command line, none of the heavy libraries the
commands use when they run (issue 22: start-up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Imported only by the commands (and the parts of them) that use them.
HEAVY = ("textual", "matplotlib", "pyarrow", "dask", "distributed", "pydantic", "numpy", "paho")

_PROBE = """
import json, sys
from migrate.cli.main import main
sys.argv = ["xmig", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
sys.__stderr__.write(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _top_level_modules_after(*args: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    return set(json.loads(p.stderr.strip().splitlines()[-1]))


def test_help_imports_none_of_the_heavy_libraries():
    loaded = _top_level_modules_after("--help")
    assert "typer" in loaded           # the probe did run the command line
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_command_help_imports_none_of_the_simulator_libraries():
    # typer itself (0.2x) converts Path and number options through pydantic once it
    # parses a command's options, so pydantic is allowed here and only here.
    loaded = _top_level_modules_after("run", "--help")
    heavy = set(HEAVY) - {"pydantic"}
    assert not loaded & heavy, sorted(loaded & heavy)
