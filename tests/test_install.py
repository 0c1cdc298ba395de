"""xmig installs like a package: the wheel built from this checkout, installed in a fresh
virtual environment outside it, runs ``xmig --help``, lists and copies the shipped
examples, and migrates one of them, from a folder that knows nothing of the checkout.

The dependencies come from pip's usual sources (its cache holds them once they have been
installed on this machine). ``.ci/run`` does the same steps explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))
    return env


def _run(args, cwd: Path, env) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    where = tmp_path_factory.mktemp("install")
    env = _clean_env()
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", where / "wheels", ROOT], where, env)
    wheels = sorted((where / "wheels").glob("xmig-*.whl"))
    assert len(wheels) == 1, wheels
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    bindir = where / "venv" / "bin"
    _run([bindir / "python", "-m", "pip", "install", "-q", wheels[0]], where, env)
    work = where / "elsewhere"
    work.mkdir()
    return bindir, work, env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    bindir, work, env = installed
    found = _run([bindir / "python", "-c", "import migrate, hypervisor, guest; "
                  "print(migrate.__file__, hypervisor.__file__, guest.__file__)"], work, env)
    for path in found.stdout.split():
        assert Path(path).is_relative_to(bindir.parent), path


def test_the_installed_xmig_helps_lists_copies_and_migrates(installed):
    bindir, work, env = installed
    xmig = bindir / "xmig"
    assert "xmig: watch Xen live-migrate a guest" in _run([xmig, "--help"], work, env).stdout
    listing = _run([xmig, "examples"], work, env).stdout
    assert "balloon" in listing and "sweeps/balloon-deflate-sweep" in listing
    assert all(f"sites/{n}" in listing for n in ("remove-page", "set-typed", "pod-steal", "physmap-add"))
    _run([xmig, "examples", "copy"], work, env)
    for name in ("balloon.yaml", "idle.yaml", "sweeps/balloon-deflate-sweep.yaml", "mosquitto/acl",
                 "sites/set-typed.yaml"):
        assert (work / "examples" / name).read_bytes() == (ROOT / "examples" / name).read_bytes()
    run = _run([xmig, "run", "--guest", "examples/idle.yaml", "--no-dashboard"], work, env)
    assert "verify: OK" in run.stdout
