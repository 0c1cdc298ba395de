"""Debian's headless Chromium, driven over the DevTools protocol: open a page and take
screenshots until one shows what a test waits for (the tests of ``xmig serve``).

Chromium is started with ``--remote-debugging-port=0`` and says on stderr which port
it took; one websocket to the page's target sends ``Page.navigate`` and
``Page.captureScreenshot``. The websocket client is aiohttp's (textual-serve needs it).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from typing import Callable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-port=0", "--remote-allow-origins=*")


class Chromium:
    """``async with Chromium(url, 1280, 800) as c: png = await c.shoot_until(ok)``: the
    browser opens ``url`` as it starts (a page target attached from its first moment)."""

    def __init__(self, url: str, width: int = 1280, height: int = 800):
        self.url = url
        self.size = (width, height)
        self.proc: subprocess.Popen | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="xmig-chromium-")
        self._session = None
        self._ws = None
        self._seq = 0

    async def __aenter__(self) -> "Chromium":
        import aiohttp

        w, h = self.size
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--window-size={w},{h}",
                                      f"--user-data-dir={self._profile.name}", self.url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = await asyncio.to_thread(self._devtools_port)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in await r.json(content_type=None) if t.get("type") == "page"]
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    def _devtools_port(self) -> int:
        for line in self.proc.stderr:
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m[1])
        raise RuntimeError(f"chromium exited ({self.proc.wait()}) without a DevTools port")

    async def call(self, method: str, **params) -> dict:
        self._seq += 1
        await self._ws.send_str(json.dumps({"id": self._seq, "method": method, "params": params}))
        while True:
            msg = json.loads((await self._ws.receive()).data)
            if msg.get("id") == self._seq:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])

    async def shoot_until(self, ok: Callable[[bytes], bool], tries: int = 60, every_s: float = 0.5) -> bytes:
        """Screenshots until ``ok(png)``; the last one either way (the test asserts)."""
        png = b""
        for _ in range(tries):
            png = await self.screenshot()
            if ok(png):
                break
            await asyncio.sleep(every_s)
        return png

    async def __aexit__(self, *exc) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()
        self._profile.cleanup()


def colour_share(png: bytes, test: Callable) -> float:
    """The fraction of a PNG's pixels whose (r, g, b) arrays pass ``test`` (numpy)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return float(test(rgb[..., 0], rgb[..., 1], rgb[..., 2]).mean())
