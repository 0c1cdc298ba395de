"""``xmig serve``: the teaching app in a web browser, for students without Python.

Xen has no counterpart. textual-serve runs one ``xmig replay`` (or ``xmig watch``)
process per browser tab with Textual's web driver and relays its screen over a
websocket; this module bounds how many run at once, keeps the page free of anything
fetched from the internet (the font comes from textual-serve's own files, not a font
CDN), and turns the usual failures (port in use, an address this machine does not
have, a recording that cannot be read) into one line and exit 2 before it listens.

The child process knows it is served from ``TEXTUAL_DRIVER`` (``served()``): it shows
the app although its output is a pipe, and prints no summary after it, since that pipe
carries the web driver's packets.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
from pathlib import Path

import typer

#: the commands ``xmig serve`` can put in a browser
SERVABLE = ("replay", "watch")
#: options of those commands that make no app to serve
NOT_SERVED = ("--no-dashboard", "--export", "--at", "--size", "--record")
DEFAULT_MAX_CLIENTS = 8

_FONT_LINK = re.compile(r"<link[^>]*fonts\.googleapis\.com[^>]*>", re.S)
_LOCAL_FONT = """<style>
      @font-face { font-family: "Roboto Mono";
                   src: url("{{ config.static.url }}fonts/RobotoMono-VariableFont_wght.ttf"); }
    </style>"""

FULL_PAGE = """<!DOCTYPE html><html><head><title>xmig: full</title></head>
<body style="background:#0c181f;color:#eee;font-family:monospace;padding:2em">
<p>xmig serve: all {n} places are taken (at most {n} watchers at once).</p>
<p>Try again when someone closes their tab.</p></body></html>"""


def served() -> bool:
    """True in a process textual-serve started for a browser tab."""
    return os.environ.get("TEXTUAL_DRIVER", "").endswith("WebDriver")


def offline_templates(folder: Path) -> Path:
    """textual-serve's page with its font-CDN link swapped for its own bundled font,
    written into ``folder``: a classroom without internet gets the same page."""
    import textual_serve

    page = (Path(textual_serve.__file__).parent / "templates" / "app_index.html").read_text(encoding="utf-8")
    (folder / "app_index.html").write_text(_FONT_LINK.sub(_LOCAL_FONT, page), encoding="utf-8")
    return folder


def check_address(host: str, port: int) -> None:
    """Fail now, in one line, if ``host:port`` cannot be listened on."""
    from migrate.cli.common import UsageError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"--port {port}: {host}:{port} is in use (another xmig serve?); "
                                 "choose another --port") from None
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def child_command(args: list[str]) -> str:
    """The shell command textual-serve starts for each tab: this Python, this xmig."""
    return shlex.join([sys.executable, "-m", "migrate", *args])


def check_served_args(args: list[str]) -> None:
    """``replay FILE ...`` or ``watch --run ...``; a recording is read once now so a
    bad file is the lecturer's error, not every student's blank tab."""
    from migrate.cli.common import UsageError

    if not args or args[0] not in SERVABLE:
        found = f"found {args[0]!r}" if args else "found nothing"
        raise UsageError(f"expected the command to serve, replay or watch, after serve's own options "
                         f"(e.g. xmig serve --port 8000 replay run.events); {found}")
    bad = [a for a in args[1:] if a.split("=")[0] in NOT_SERVED]
    if bad:
        raise UsageError(f"{bad[0].split('=')[0]}: not with xmig serve (it serves the app; "
                         f"run xmig {args[0]} {bad[0].split('=')[0]} on its own)")
    if args[0] == "replay":
        files = [a for a in args[1:] if not a.startswith("-")]
        if not files:
            raise UsageError("replay: expected the event log to serve (xmig serve replay run.events)")
        from migrate.events.log import EventLogError, read_event_log

        try:
            read_event_log(Path(files[0]))
        except EventLogError as exc:
            raise UsageError(str(exc)) from None


def make_server(command: str, host: str, port: int, max_clients: int, templates: Path, title: str):
    """A textual-serve ``Server`` that refuses (HTTP 503) a tab beyond ``max_clients``
    and writes its page's addresses as the browser reached it (a LAN address works)."""
    from aiohttp import web
    from textual_serve.server import Server

    class BoundedServer(Server):
        def __init__(self) -> None:
            super().__init__(command, host=host, port=port, title=title, templates_path=templates)
            self.max_clients = max_clients
            self.active = 0
            self.sessions: set[asyncio.Task] = set()      # one per tab, each with its app process

        def full(self) -> web.Response:
            return web.Response(status=503, text=FULL_PAGE.format(n=self.max_clients), content_type="text/html")

        async def handle_index(self, request: web.Request):
            if self.active >= self.max_clients:
                return self.full()
            self.public_url = f"{request.scheme}://{request.host}"     # the address the browser used
            return await super().handle_index(request)

        async def handle_websocket(self, request: web.Request):
            if self.active >= self.max_clients:
                return self.full()
            self.active += 1
            task = asyncio.current_task()
            self.sessions.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.active -= 1
                self.sessions.discard(task)

        async def on_shutdown(self, app) -> None:
            """Ctrl-C or SIGTERM: every tab's session is cancelled, which tells its app
            to quit, instead of aiohttp waiting a minute for open websockets."""
            for task in list(self.sessions):
                task.cancel()
            await asyncio.gather(*self.sessions, return_exceptions=True)

        async def on_startup(self, app) -> None:
            """textual-serve's banner is replaced by one line, printed once listening."""

        def listening(self, *_: object) -> None:
            shown = f"[{host}]" if ":" in host else host
            print(f"xmig serve: {title} on http://{shown}:{port}/ (at most {self.max_clients} "
                  "watchers at once, more are refused); Ctrl-C stops", flush=True)

        def serve(self, debug: bool = False) -> None:
            """As textual-serve's, but the line above comes once the port listens."""
            self.debug = debug
            self.initialize_logging()
            loop = asyncio.new_event_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_exit)
            web.run_app(self._make_app(), host=host, port=port, handle_signals=False, loop=loop,
                        shutdown_timeout=2, print=self.listening)

    return BoundedServer()


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``xmig`` app."""
    from migrate.cli.common import _guard

    @app.command(short_help="Serve the app to web browsers (replay or watch).",
                 options_metavar="[OPTIONS] replay|watch ARGS...",
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @_guard
    def serve(
        ctx: typer.Context,
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on: 127.0.0.1 (this machine only), or this machine's LAN address, or 0.0.0.0 (every interface)."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on."),
        max_clients: int = typer.Option(DEFAULT_MAX_CLIENTS, "--max-clients", min=1, help="Browser tabs served at once; one more is refused with a 'full' page (HTTP 503) until a tab closes."),
    ) -> None:
        """Serve the teaching app to web browsers: each tab gets its own app, a replay
        of a recording or a watcher of a run on a broker, with nothing to install.
        Serve's options come first, then the command and its own: e.g. xmig serve replay
        run.events --speed 1, or xmig serve --host 0.0.0.0 --port 8080 watch --run demo
        --broker mqtt://10.0.0.5 (then students open http://THIS-MACHINE:8080/).

        The page uses no internet (its font ships with textual-serve). Exit 2 if the
        port is in use, the address is not this machine's, or the recording is bad."""
        args = list(ctx.args)
        check_served_args(args)
        check_address(host, port)
        with tempfile.TemporaryDirectory(prefix="xmig-serve-") as tmp:
            server = make_server(child_command(args), host, port, max_clients, offline_templates(Path(tmp)),
                                 title="xmig " + " ".join(args))
            server.serve()


__all__ = ["check_address", "check_served_args", "child_command", "make_server", "offline_templates",
           "register", "served"]
