"""``xmig receive`` and ``xmig inspect``: the destination of a migration stream
(``xl migrate-receive``, restore as in tools/libs/guest/xg_sr_restore.c) and a reader
that checks a stream file against Xen's libxc-migration-stream spec."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from migrate.cli.checks import _save_outputs, _short
from migrate.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, _err_console, _guard


def receive(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to accept one migration stream on, e.g. 127.0.0.1:8002."),
    report: Optional[Path] = typer.Option(None, help="Write the restore result as JSON here."),
    host_memory: str = typer.Option("64GiB", help="Destination host memory (frames the restore may populate)."),
    timeout: float = typer.Option(600.0, help="Give up (exit 1) when the whole receive, waiting for the sender included, takes longer than this many seconds."),
) -> None:
    """The destination side: accept one stream over TCP and restore it (xl migrate-receive).

    Exit codes: 0 restored; 1 the restore failed, timed out, or the VERIFY pass found pages
    that differ; 2 bad input; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP; the report says so)."""
    from rich.console import Console

    from hypervisor.abi import DomainLayout
    from hypervisor.domain import Hypervisor

    from migrate.toolstack.restore import receive_tcp
    from guest.units import parse_size

    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]          # [::1]:8002
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen: expected HOST:PORT like 127.0.0.1:8002 (port 0-65535), found {_short(listen)!r}")
    if not 0 < timeout < 1e9:
        raise UsageError(f"--timeout: expected a positive number of seconds, found {timeout!r}")
    from migrate.run import outputs

    outputs.check_targets({"--report": report}, inputs={})
    from migrate.run.outputs import write_json
    try:
        frames = int(parse_size(host_memory)) // 4096
    except ValueError as exc:
        raise UsageError(f"--host-memory: {exc}") from None
    if not 0 < frames <= 1 << 40 - 12:
        raise UsageError(f"--host-memory: expected a size from 4KiB to 1TiB, found {_short(host_memory)!r}")
    dst = Hypervisor(host_frames=frames, behaviour="fixed", record_events=False)
    import numpy as np

    dst.build(DomainLayout(ram_gfns=np.empty(0, dtype=np.int64)))
    console = Console()

    def ready(bound_host: str, bound_port: int) -> None:
        # Printed once the socket is listening (not before: a sender that starts on
        # this line must find the port open), with the real port when 0 was asked.
        console.print(f"migration target: Ready to receive domain on {bound_host}:{bound_port}.", markup=False)
        sys.stdout.flush()

    async def go():
        stop = asyncio.Event()
        with outputs.stop_on_signals(stop.set):
            res = await receive_tcp(host, int(port), dst, on_listen=ready, timeout=timeout, stop=stop)
        return res, stop.is_set()

    result, interrupted = asyncio.run(go())
    data = result.as_dict()
    gfns, _tokens = dst.snapshot()
    data["populated_pages"] = int(gfns.size)
    if report is not None:
        _save_outputs({"--report": (report, lambda p: write_json(p, data))},
                      dump=lambda: json.dumps(data, indent=2) + "\n")
    err = _err_console()
    if interrupted:
        err.print(f"xmig: interrupted: the receive stopped after {data['bytes_received']} bytes "
                  f"({data['populated_pages']} pages populated)", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not result.complete:
        err.print(f"migration target: restore failed: {result.error}", markup=False)
        raise typer.Exit(EXIT_FAILED)
    if result.verify_mismatches:
        err.print(f"migration target: destination diverged: {result.verify_mismatches} pages differ from "
                  f"the source in the VERIFY pass (first: {', '.join(hex(p) for p in result.verify_mismatch_pfns[:4])})",
                  markup=False)
        raise typer.Exit(EXIT_FAILED)
    console.print(f"migration target: Transfer complete: {data['populated_pages']} pages populated.", markup=False)
    raise typer.Exit(EXIT_OK)


def inspect(
    stream: Path = typer.Argument(..., help="A migration stream file written by 'xmig run --stream FILE'."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise and validate a migration stream v2 file (exit 1 if malformed)."""
    from migrate.stream import summarise_stream

    if not stream.exists():
        raise UsageError(f"{stream}: no such file")
    if stream.is_dir():
        raise UsageError(f"{stream}: is a folder, expected a stream file")
    from guest.inputs import InputError, check_input

    try:      # /dev/zero or a FIFO would never end; the parser bounds what a file holds
        check_input(stream, 1 << 62, "stream file")
    except InputError as e:
        raise UsageError(f"{stream}: {e}") from None
    summary = summarise_stream(stream)
    from rich.console import Console

    data = summary.as_dict() if hasattr(summary, "as_dict") else dict(vars(summary))
    console = Console()
    if as_json:
        console.print_json(json.dumps(data, default=str))
    else:
        from rich.table import Table

        t = Table(title=f"{stream}")
        t.add_column("record")
        t.add_column("count", justify="right")
        for name, n in data.get("records_by_type", {}).items():
            t.add_row(str(name), str(n))
        console.print(t)
        p = Table(title="PAGE_DATA entries by type")
        p.add_column("type")
        p.add_column("entries", justify="right")
        for name, n in data.get("pages_by_type", {}).items():
            p.add_row(str(name), str(n))
        console.print(p)
        if data.get("pfn_min") is None:
            console.print(f"PFN range: none (no PAGE_DATA); bytes: {data.get('total_bytes')}", markup=False)
        else:
            console.print(f"PFN range: {data['pfn_min']:#x} .. {data['pfn_max']:#x}; "
                          f"data pages: {data.get('data_pages')}; bytes: {data.get('total_bytes')}", markup=False)
        console.print("valid" if data.get("valid") else f"INVALID: {data.get('error')}", markup=False,
                      soft_wrap=True)
    if not data.get("valid"):
        _err_console().print(f"xmig: {stream}: malformed migration stream: {data.get('error')}", markup=False)
    raise typer.Exit(EXIT_OK if data.get("valid") else EXIT_FAILED)



def register(app: typer.Typer) -> None:
    """Add ``receive`` and ``inspect`` to the ``xmig`` app."""
    app.command()(_guard(receive))
    app.command()(_guard(inspect))
