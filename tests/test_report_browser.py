"""The report in a real browser: headless Chromium (Debian's ``chromium``) over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on fds 3/4, so no
websocket client is needed). Checks that every image loads, that no request leaves the
page's folder, that the page logs no error (a CSP violation would), that the gallery's
sort and filter work, and saves a full-page screenshot.

Skips with a reason where chromium is absent. ``RSLAVIS_SCREENSHOT_DIR`` keeps the
screenshots there.
"""

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.test_report import fake_run  # noqa: F401  (fixture)

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]


def chromium_path():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium driven over the DevTools pipe; ``events`` keeps every event received."""

    def __init__(self, exe, timeout=90):
        self.timeout = timeout
        self.user_dir = tempfile.mkdtemp(prefix="rslavis-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = " ".join(CHROMIUM_FLAGS) + f" --user-data-dir={self.user_dir} about:blank"
        self._log = open(os.path.join(self.user_dir, "stderr.log"), "w+b")
        # bash (dash refuses fds above 9) puts the pipe ends on fds 3 (commands in) and 4 (answers out), as Chromium expects
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {exe} {args} 3<&{to_child_r} 4>&{from_child_w}"],
            pass_fds=(to_child_r, from_child_w), stdout=subprocess.DEVNULL, stderr=self._log,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        want = self._id
        while True:
            m = self._read()
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method):
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read()
            self.events.append(m)
            if m.get("method") == method:
                return m

    def _read(self):
        deadline = time.time() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("no answer from chromium; its stderr ends with:\n" + self.stderr_tail())
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe; its stderr ends with:\n" + self.stderr_tail())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def stderr_tail(self, n=15):
        self._log.flush()
        self._log.seek(0)
        lines = [l for l in self._log.read().decode(errors="replace").splitlines() if "dbus" not in l]  # no D-Bus in containers
        return "\n".join(lines[-n:])

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)
        self._log.close()
        shutil.rmtree(self.user_dir, ignore_errors=True)


PAGE_CHECK = """
(() => {
  const imgs = Array.from(document.images).map(i => ({src: i.src.slice(0, 30), ok: i.complete && i.naturalWidth > 0}));
  const cards = () => Array.from(document.querySelectorAll('#gallery .card'));
  const visible = () => cards().filter(c => c.style.display !== 'none');
  const out = {imgs, n_cards: cards().length, sections: Array.from(document.querySelectorAll('h2')).map(h => h.textContent)};
  const sort = document.getElementById('sort');
  if (sort && sort.querySelector('option[value=sde]')) {
    sort.value = 'sde'; sort.dispatchEvent(new Event('change'));
    out.sde_order = visible().map(c => c.getAttribute('data-sde'));
    sort.value = 'hall'; sort.dispatchEvent(new Event('change'));
    out.hall_order = visible().map(c => +c.getAttribute('data-hall'));
    const box = document.getElementById('only-hall');
    box.checked = true; box.dispatchEvent(new Event('change'));
    out.filtered = visible().map(c => +c.getAttribute('data-hall'));
    box.checked = false; box.dispatchEvent(new Event('change'));
    sort.value = 'order'; sort.dispatchEvent(new Event('change'));
  }
  return out;
})()
"""


def render(page, screenshot):
    """Load ``page`` in Chromium; returns (page check result, request URLs, console errors)."""
    exe = chromium_path()
    browser = Chromium(exe)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        result = browser.send("Runtime.evaluate", {"expression": PAGE_CHECK, "returnByValue": True}, session=session)
        check = result["result"]["value"]
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1},
        }, session=session)
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        time.sleep(0.2)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drain pending events
    finally:
        browser.close()
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    errors = [e["params"]["entry"] for e in browser.events if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
    errors += [e["params"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    return check, urls, failed, errors


def outside_requests(urls, folder):
    """Requests that leave ``folder`` (``data:`` and ``about:`` stay inside the page)."""
    folder = Path(folder).resolve()
    bad = []
    for u in urls:
        p = urlparse(u)
        if p.scheme in ("data", "about", "blob"):
            continue
        if p.scheme == "file" and folder in Path(unquote(p.path)).resolve().parents:
            continue
        bad.append(u)
    return bad


@pytest.fixture(scope="module")
def chromium():
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return exe


def _keep(shot):
    keep = os.environ.get("RSLAVIS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_report_renders_in_chromium(chromium, fake_run, tmp_path):
    from rslavis.report import write_report

    page = write_report(fake_run["dir"], tmp_path / "site" / "report.html", datasets=fake_run["datasets"], parser="rules")
    shot = tmp_path / "report.png"
    check, urls, failed, errors = render(page, shot)
    _keep(shot)
    assert check["imgs"] and all(i["ok"] for i in check["imgs"]), [i for i in check["imgs"] if not i["ok"]]
    assert len(check["imgs"]) == 2 + check["n_cards"]  # training and evaluation figures, one thumbnail per card
    assert check["n_cards"] == fake_run["n_images"]
    assert not outside_requests(urls, page.parent), outside_requests(urls, page.parent)
    assert not failed, failed
    assert not errors, errors
    assert {"Config", "Metrics", "Training curves"} <= set(check["sections"])
    sde = [float(v) if v else 2.0 for v in check["sde_order"]]
    assert sde == sorted(sde) and len(sde) == check["n_cards"]
    assert check["hall_order"] == sorted(check["hall_order"], reverse=True)
    assert check["filtered"] and all(h > 0 for h in check["filtered"]) and len(check["filtered"]) < check["n_cards"]
    assert shot.stat().st_size > 10000


def test_comparison_renders_in_chromium(chromium, fake_run, tmp_path):
    from rslavis.report import write_comparison

    page = write_comparison(fake_run["dir"], fake_run["dir_b"], tmp_path / "compare.html", parser="rules")
    shot = tmp_path / "compare.png"
    check, urls, failed, errors = render(page, shot)
    _keep(shot)
    assert all(i["ok"] for i in check["imgs"]), check["imgs"]
    assert not outside_requests(urls, page.parent)
    assert not failed and not errors, (failed, errors)
    assert shot.stat().st_size > 10000


def test_outside_request_detection(tmp_path):
    """The request check itself: a page pointing outside its folder is caught."""
    assert outside_requests(["data:image/png;base64,xx", (tmp_path / "a.html").as_uri()], tmp_path) == []
    assert outside_requests(["https://cdn.example.org/x.js", (tmp_path.parent / "b.png").as_uri()], tmp_path) == [
        "https://cdn.example.org/x.js", (tmp_path.parent / "b.png").as_uri()]
