"""Where a run's results go: the ``--report``, ``--csv``, ``--stream`` and ``--plot`` files.

What ``xl``'s own output handling would promise if a migration's results were worth
keeping: targets are checked before the run (so a typo costs nothing), a target is a
regular file or a new one (a device node or FIFO is never replaced by a rename), no two
outputs and no input share a file, and once a run has finished its results are never
thrown away: a write that fails (disk full) leaves no temporary file behind and the
results go to a fallback file named on stderr, or to stdout as a last resort. SIGTERM
and SIGHUP stop a run the way Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from guest.inputs import file_kind as _kind
from migrate.codec.jsonable import jsonable  # noqa: F401  (re-exported: reports use it)

#: Signals that stop a run cleanly (the migration aborts, the source resumes, the
#: report says ``aborted``): Ctrl-C, a service manager's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Suffixes matplotlib writes (``--plot`` picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")


class OutputError(ValueError):
    """An output target that cannot be used: the CLI turns it into one line, exit 2."""


def _identity(path: Path) -> tuple:
    """What makes two names the same file: (device, inode) when it exists (hard links,
    symlinks), else the resolved path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def check_target(path: Path, option: str) -> None:
    """A target must be a regular file or not exist yet, in a writable folder."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{option}: {path}: {e.strerror or e}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{option}: {path} is {_kind(st.st_mode)}; give the path of a regular file "
                          "(it is replaced when the run ends)")
    parent = Path(os.path.realpath(path)).parent
    if not parent.is_dir():
        raise OutputError(f"{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option}: folder {parent} is not writable")


def check_targets(targets: Mapping[str, Path | str | None], inputs: Mapping[str, Path | str | None]) -> None:
    """Check every given target (``{"--report": path}``) and that no two targets, and no
    target and input (``{"the scenario file": path}``), are the same file."""
    seen: dict[tuple, str] = {}
    for what, p in inputs.items():
        if p is not None:
            seen.setdefault(_identity(Path(p)), what)
    for option, p in targets.items():
        if p is None:
            continue
        path = Path(p)
        check_target(path, option)
        ident = _identity(path)
        other = seen.get(ident)
        if other is not None:
            raise OutputError(f"{option}: {path} is also {other}; give each output its own file")
        seen[ident] = option
    plot = targets.get("--plot")
    if plot is not None and Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        raise OutputError(f"--plot: {plot}: expected an image file name ending in "
                          f"{', '.join(PLOT_SUFFIXES[:3])} (the format comes from the suffix)")


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w", **kw) -> Iterator[Any]:
    """Write ``path`` through a hidden temporary file beside it, renamed into place only
    when the write completed; on any error the temporary file is removed. A target that
    has become a non-regular file since the check is refused, never replaced."""
    target = Path(os.path.realpath(path))
    try:
        st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{path} is {_kind(st.st_mode)}; not replaced")
        perm = stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        perm = 0o666 & ~umask           # what open(path, "w") would have given
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, perm)
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path | str, data: Any) -> None:
    """``data`` as indented JSON, written atomically (``atomic_file``)."""
    text = json.dumps(data, indent=2, sort_keys=False, default=jsonable) + "\n"
    with atomic_file(path) as fh:
        fh.write(text)


def _fallback_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"xmig-{os.getpid()}-", suffix=f"-{path.name}")
    os.close(fd)
    return Path(name)


def write_results(items: Mapping[str, tuple[Path | str, Callable[[Path], Any]]], *,
                  dump: Callable[[], str] | None = None) -> list[str]:
    """Write each result (``{"--report": (path, writer)}``) after a run. A write that
    fails is retried into a new file in the temporary folder; if that fails too and
    ``dump`` is given, its text goes to stdout. Returns one line per failed target,
    saying where its results are (empty when all went where asked)."""
    problems: list[str] = []
    for option, (path, writer) in items.items():
        try:
            writer(Path(path))
            continue
        except (OSError, OutputError) as e:
            why = f"{e.strerror or e}" if isinstance(e, OSError) else str(e)
        where = None
        try:
            fb = _fallback_path(Path(path))
            try:
                writer(fb)
                where = f"the results were saved to {fb} instead"
            except BaseException:
                with contextlib.suppress(OSError):
                    fb.unlink()
                raise
        except (OSError, OutputError):
            if dump is not None and option == "--report":
                sys.stdout.write(dump())
                sys.stdout.flush()
                where = "the report was printed to stdout instead"
        problems.append(f"{option}: cannot write {path}: {why}; "
                        + (where or "no fallback file could be written either"))
    return problems


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], Any]) -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP call ``on_stop()`` on the running event
    loop instead of killing the process (so the run aborts cleanly and reports)."""
    import asyncio

    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        try:
            before = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_stop)
            installed.append((sig, before))
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig, before in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, TypeError):
                loop.remove_signal_handler(sig)
                # back to what was there (the CLI's stop-as-Ctrl-C handler), not to
                # the default action, so writing the results is not killed mid-file
                signal.signal(sig, before)


__all__ = ["OutputError", "check_targets", "check_target", "atomic_file", "jsonable", "write_json", "PlotError", "load_matplotlib", "MISSING",
           "write_results", "stop_on_signals", "STOP_SIGNALS"]


# ----------------------------------------------------------------------------- plots
# matplotlib is an optional extra, imported only when a plot is drawn (--plot, sweep plots).

MISSING = "matplotlib is needed for --plot: install the plot extra: pip install 'xmig[plot]'"


class PlotError(RuntimeError):
    """The plot cannot be drawn (matplotlib missing, nothing to plot)."""


def load_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise PlotError(MISSING) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    return plt, ListedColormap, BoundaryNorm
