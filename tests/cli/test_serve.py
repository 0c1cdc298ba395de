"""``xmig serve``: the app in a web browser. A real ``xmig serve replay`` on a free
loopback port, driven by Debian's headless Chromium over the DevTools protocol
(``tests/chromium.py``): the page shows the GFN map, it fetches nothing from the
internet, a tab beyond ``--max-clients`` is refused, and a port in use is one line and
exit 2."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.chromium import CHROMIUM, Chromium, colour_share
from tests.xmig_process import one_error_line, xmig_popen

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Served:
    """``xmig serve --max-clients 1 replay EVENTS --speed max`` on a free loopback port."""

    def __init__(self, events):
        self.events = str(events)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = xmig_popen("serve", "--port", port, "--max-clients", 1, "replay", events, "--speed", "max")
        first = self.proc.stdout.readline()              # printed once the port listens
        assert first.startswith("xmig serve: "), first + self.proc.stderr.read()

    def apps(self) -> list[str]:
        """The tabs' app processes still alive (``xmig replay EVENTS`` children)."""
        out = subprocess.run(["pgrep", "-af", f"migrate replay {self.events}"], capture_output=True, text=True)
        return [ln for ln in out.stdout.splitlines() if "pgrep" not in ln and "/bin/sh" not in ln]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()                    # SIGTERM: as Ctrl-C
        rc = self.proc.wait(60)                      # bounds a hang only
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc


@pytest.fixture
def served(recorded_run):
    s = Served(recorded_run.events)
    yield s
    s.stop()


def sent_green(r, g, b):
    """The map's 'sent' glyphs (Textual's green) in the browser's pixels."""
    return (g > 180) & (r > 100) & (r < 200) & (b < 100)


def test_the_page_uses_no_internet(served):
    status, page = get(served.url)
    assert status == 200
    hosts = set(re.findall(r"""(?:(?:https?|wss?):)?//([^/\s"'<>)]+)""", page))
    assert hosts == {served.url.split("/")[2], "www.w3.org"}, hosts     # w3.org: the SVG namespace, not fetched
    assert "googleapis" not in page


@needs_chromium
async def test_chromium_shows_the_map_and_sigterm_stops_the_tabs_app(served, tmp_path):
    async with Chromium(served.url, 1280, 800) as browser:
        png = await browser.shoot_until(lambda p: colour_share(p, sent_green) > 0.05)
        (tmp_path / "browser.png").write_bytes(png)
        assert colour_share(png, sent_green) > 0.05      # the map, mostly sent pages at the end
        assert len(served.apps()) == 1
        assert await asyncio.to_thread(served.stop) == 0    # the tab still open
    assert served.apps() == []


async def test_a_tab_beyond_max_clients_is_refused_until_one_closes(served):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(served.url + "ws?width=80&height=24")   # what a tab opens
        async with http.get(served.url) as r:
            assert r.status == 503 and "all 1 places are taken" in await r.text()
        async with http.get(served.url + "ws") as r:
            assert r.status == 503
        await ws.close()
        for _ in range(100):        # the tab closed: its place is free again
            async with http.get(served.url) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert r.status == 200


def test_a_port_in_use_is_one_line_and_exit_2(recorded_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = xmig_popen("serve", "--port", port, "replay", recorded_run.events)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"--port {port}: 127.0.0.1:{port} is in use" in one_error_line(err)


@pytest.mark.parametrize("args, says", [
    ((), "expected the command to serve, replay or watch"),
    (("run", "--guest", "examples/balloon.yaml"), "found 'run'"),
    (("replay", "EVENTS", "--export", "x"), "--export: not with xmig serve"),
    (("replay", "no-such.events"), "no-such.events: byte 0: cannot open"),
    (("--host", "no-such-host.invalid", "replay", "EVENTS"), "--host no-such-host.invalid: not an address"),
])
def test_bad_serve_input_is_one_line_and_exit_2(xmig, recorded_run, args, says):
    res = xmig("serve", *[recorded_run.events if a == "EVENTS" else a for a in args], timeout=60)
    assert res.returncode == 2
    assert says in one_error_line(res.stderr)
