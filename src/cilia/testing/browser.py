"""A real headless Chromium driven over the Chrome DevTools protocol, for tests of web pages.

The browser is Debian's `chromium` (scripts/install-deps.sh), started inside a network namespace
(the page is served there; nothing is opened in the root namespace) with `--remote-debugging-pipe`:
the protocol runs over two pipes (fd 3: commands in, fd 4: replies and events out, each message
JSON ended by a NUL byte), so no port is opened and no websocket client is needed. Used as

    with browser(netns) as page:
        page.navigate("http://127.0.0.1:12000/")
        page.evaluate("document.title")
        page.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cilia.testing.wait import wait_for

CHROMIUM = "chromium"


class BrowserError(RuntimeError):
    pass


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


class Page:
    """One tab of the browser, reached through a flat DevTools session."""

    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int) -> None:
        self._process = process
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def _send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0,
              session: bool = True) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from the browser in time")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise BrowserError(f"the browser went away (exit {self._process.poll()})")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def open(self) -> None:
        target = self._send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                   session=False)["sessionId"]
        self._send("Page.enable")
        self._send("Runtime.enable")
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        reply = self._send("Page.navigate", {"url": url}, timeout)
        if reply.get("errorText"):
            raise BrowserError(f"navigating to {url}: {reply['errorText']}")
        wait_for(lambda: self.evaluate("document.readyState") == "complete", timeout, 0.1, f"{url} did not load")

    def evaluate(self, expression: str) -> Any:
        """The expression's value (JSON-able), evaluated in the page."""
        reply = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression}: {reply['exceptionDetails'].get('text')}: "
                               f"{reply['exceptionDetails'].get('exception', {}).get('description')}")
        return reply.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        data = self._send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def browser(netns: str | None = None) -> Iterator[Page]:
    """A headless Chromium (in `netns` when given) with one open tab; always stopped after."""
    profile = Path(tempfile.mkdtemp(prefix="cilia-chromium-"))
    commands_r, commands_w = os.pipe()  # we write, the browser reads (its fd 3)
    replies_r, replies_w = os.pipe()  # the browser writes (its fd 4), we read
    # The browser's ends moved above 10, so that the shell can put them on 3 and 4 whatever
    # numbers the pipes got here.
    child_in = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10)
    child_out = fcntl.fcntl(replies_w, fcntl.F_DUPFD, 10)
    for fd in (commands_r, replies_w):
        os.close(fd)
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", "--mute-audio",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
    command = ["nsenter", f"--net=/run/netns/{netns}", *args] if netns else args
    script = f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-'
    process = subprocess.Popen(["bash", "-c", script, *command], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(child_in, child_out))
    os.close(child_in)
    os.close(child_out)
    page = Page(process, commands_w, replies_r)
    try:
        page.open()
        yield page
    finally:
        with contextlib.suppress(Exception):
            page._send("Browser.close", session=False, timeout=5)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        os.close(commands_w)
        os.close(replies_r)
        shutil.rmtree(profile, ignore_errors=True)
