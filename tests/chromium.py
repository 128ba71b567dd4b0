"""Headless Debian ``chromium`` driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: standard library only, no new dependency), for the tests that look
at a UI as a user does (tests/test_browser.py, tests/test_sweep.py). Pages are polled in real
time until what a user must see is there, and saved as PNGs."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --- processes ---------------------------------------------------------------------------------

def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT to the process group, then SIGKILL to whatever is left of it (``mlflow ui`` starts
    uvicorn and huey consumers, ``prefect server`` uvicorn; chromium its zygotes and renderers).
    A short grace (conftest.STOP_GRACE): no test looks at how these stop."""
    for sig, wait in ((signal.SIGINT, 3), (signal.SIGKILL, 10)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the browser -------------------------------------------------------------------------------

class Chromium:
    """Headless chromium driven over the DevTools protocol on a pipe: commands go to the child's
    fd 3, replies and events come from its fd 4, each message JSON ended by a NUL byte."""

    def __init__(self, profile: Path, shots: Path, log: Path, size: tuple[int, int] = (1400, 1000)):
        self.shots, self.size, self.log = shots, size, log
        shots.mkdir(parents=True, exist_ok=True)
        cmd_r, self._cmd_w = (self._high(fd) for fd in os.pipe())
        self._ev_r, ev_w = (self._high(fd) for fd in os.pipe())
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                "--remote-debugging-pipe", "about:blank"]
        # bash puts the two pipe ends on fds 3 and 4, then becomes chromium (dash takes one digit)
        wrapper = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{ev_w}', *args]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(wrapper, pass_fds=(cmd_r, ev_w), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        os.close(cmd_r)
        os.close(ev_w)
        self._buf, self._id = b"", 0
        try:
            deadline = time.monotonic() + 30
            while not (pages := [t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page"]):
                assert time.monotonic() < deadline, "chromium opened no page"
                time.sleep(0.2)
            self._session = self._call("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)["sessionId"]
            self.resize(*size)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _high(fd: int) -> int:
        """``fd`` moved to a number of 10 or more: clear of 3 and 4, where the child wants them."""
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def _call(self, method: str, timeout: float = 30, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            if select.select([self._ev_r], [], [], left)[0]:
                chunk = os.read(self._ev_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited:\n{self.log.read_text()[-2000:]}")
                self._buf += chunk

    def page(self, method: str, **params) -> dict:
        return self._call(method, session=self._session, **params)

    def resize(self, width: int, height: int) -> None:
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def eval(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def url(self) -> str:
        return self.eval("location.href")

    def open(self, url: str, until: Callable[[str], object] | None = None, timeout: float = 60) -> str:
        """Load ``url`` (a fresh document, also for a hash route) and wait until ``until(text)``."""
        self.page("Page.navigate", url="about:blank")
        self.page("Page.navigate", url=url)
        return self.wait(until, timeout)

    def wait(self, until: Callable[[str], object] | None, timeout: float = 60) -> str:
        """Poll the page's visible text until ``until(text)`` holds (or the time is up: the caller
        asserts, with a screenshot). Then a moment for the rest of the page to settle."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if until is None or until(text) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        time.sleep(1)
        return self.text()

    def click(self, label: str) -> bool:
        """Click, as a mouse does (press and release at its centre), the last visible tab, button
        or link whose text is ``label``. (React tab bars switch on pointer events, not on a
        scripted ``element.click()``.)"""
        return self._press(f"""[...document.querySelectorAll('[role=tab], button, a, li')]
            .filter(e => e.innerText && e.innerText.trim() === {json.dumps(label)} && e.offsetParent !== null)""")

    def click_selector(self, css: str) -> bool:
        """Click, as a mouse does, the last visible element that matches the CSS selector ``css``."""
        return self._press(f"""[...document.querySelectorAll({json.dumps(css)})].filter(e => e.offsetParent !== null)""")

    def _press(self, elements_js: str) -> bool:
        box = self.eval(f"""(() => {{
            const els = {elements_js};
            if (!els.length) return null;
            const el = els[els.length - 1];
            el.scrollIntoView({{block: 'center'}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()""")
        if not box:
            return False
        self.page("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"], y=box["y"])
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)
        return True

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        with suppress(RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired):
            self._call("Browser.close", timeout=5)
            self.proc.wait(10)
        _stop_group(self.proc)
        for fd in (self._cmd_w, self._ev_r):
            with suppress(OSError):
                os.close(fd)
