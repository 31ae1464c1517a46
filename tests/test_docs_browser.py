"""The documentation site as a reader sees it, in a real browser.

Builds the site (``mkdocs build --strict``) into a temporary folder, serves it on 127.0.0.1
and opens every page of ``mkdocs.yml``'s nav, one after the other, in one headless Chromium
driven over the DevTools protocol (``--remote-debugging-pipe``: JSON messages on file
descriptors 3 and 4, so no WebSocket client or browser driver is needed). On each page:

- the page itself answers HTTP 200, and so does everything it loads;
- nothing is loaded from any other host (no CDN: the site must work offline);
- every ``<img>`` loaded (``naturalWidth > 0``);
- every math element of ``pymdownx.arithmatex`` was typeset by MathJax, with no TeX error
  (an undefined macro or a syntax error), and no raw TeX (``\\(``, ``\\[``, ``\\sigma``) is
  left in the text a reader sees (code excepted);
- the browser's console shows no error and no script threw.

Skipped, with the reason, where Chromium or MkDocs is missing; ``.ci/run`` installs Debian's
``chromium``. Set ``DOCS_SCREENSHOTS=FOLDER`` to also save a full-page PNG of each page there.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("mkdocs", reason="MkDocs is not installed (pip install -e '.[docs]')")
from mkdocs.utils.yaml import yaml_load

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))),
    None,
)
PAGE_TIMEOUT_S = 30.0  # per page: load, images, MathJax (a page takes well under a second)
# Requests to other hosts that a page may make because nothing depends on them: the theme
# asks GitHub's API for the repository's stars and forks to show beside the repository link,
# and without an answer shows the link alone. Their failures (and console lines) are ignored.
OPTIONAL_REMOTE = ("https://api.github.com/repos/",)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


def nav_pages() -> list[str]:
    """The Markdown pages of mkdocs.yml's nav, in nav order (``concepts/posterior.md``)."""
    with open(ROOT / "mkdocs.yml", encoding="utf-8") as f:
        config = yaml_load(f)
    assert config.get("use_directory_urls", True), "page_url() assumes directory URLs"

    def walk(entry: Any) -> Iterator[str]:
        if isinstance(entry, str):
            if entry.endswith(".md") and "://" not in entry:
                yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from walk(value)
        elif isinstance(entry, list):
            for value in entry:
                yield from walk(value)

    return list(dict.fromkeys(walk(config["nav"])))


def page_url(page: str) -> str:
    """The site path MkDocs gives a page: ``a/b.md`` -> ``a/b/``, ``a/index.md`` -> ``a/``."""
    path = page.removesuffix(".md")
    if path == "index" or path.endswith("/index"):
        path = path.removesuffix("index")
    else:
        path += "/"
    return path


# --- a minimal DevTools protocol client over --remote-debugging-pipe ---------------------


class Chromium:
    """One headless Chromium; ``call`` sends a command and waits for its answer, and every
    event that arrives meanwhile is kept in ``events`` for the caller to read."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The browser reads commands on fd 3 and writes answers on fd 4; bash maps our pipe
        # ends there (dash takes single-digit fds only). Both are copied above 10 first so
        # that the mapping cannot clobber one with the other; the copies close in the browser.
        r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        args = [
            "--headless",
            "--no-sandbox",  # tests run as root in CI
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # no connections of the browser's own: this machine's network is closed
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', executable, *args],
                pass_fds=(r, w),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        os.close(r)
        os.close(w)
        self.log = log
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._messages: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(from_browser_r,), daemon=True)
        self._reader.start()
        self._next_id = 0
        self.events: list[dict] = []

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)  # the browser closed its end: it exited

    def _next_message(self, deadline: float) -> dict:
        try:
            message = self._messages.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise TimeoutError("Chromium did not answer in time") from None
        if message is None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Chromium exited (code {self.process.poll()}):\n{tail}")
        return message

    def call(
        self, method: str, session: str | None = None, timeout: float = PAGE_TIMEOUT_S, **params
    ) -> dict:
        """Send ``method`` (to the page of ``session``, if given) and return its result."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            command["sessionId"] = session
        self._out.write(json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._next_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, timeout: float = PAGE_TIMEOUT_S) -> dict:
        """Wait for the event ``method``, keeping every event in ``events``."""
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event["method"] == method:
                return event
        while True:
            message = self._next_message(deadline)
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._out.close()


# What each page reports once its images and MathJax are done (a JSON-able object).
PAGE_REPORT_JS = r"""
(async () => {
  const settled = (img) => img.complete ? null
    : new Promise((done) => { img.addEventListener("load", done); img.addEventListener("error", done); });
  await Promise.all(Array.from(document.images, settled));
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) await mj.startup.promise;

  const texErrors = [];
  if (mj && mj.startup && mj.startup.document) {
    for (const item of mj.startup.document.math) {
      // an error is an <merror>; an undefined macro (noundefined) is red text
      const mml = mj.startup.toMML(item.root);
      if (mml.includes("<merror") || mml.includes('mathcolor="red"')) texErrors.push(item.math);
    }
  }
  const untypeset = Array.from(document.querySelectorAll(".arithmatex"))
    .filter((el) => !el.querySelector("mjx-container"))
    .map((el) => el.textContent.replace(/\s+/g, " ").trim().slice(0, 100));
  const rawTex = [];
  const skip = "pre, code, script, style, textarea, mjx-container";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement.closest(skip)) continue;
    // a delimiter, or a macro whose delimiters Markdown ate (\[ is its escape for [)
    if (/\\(?:[()[\]]|[A-Za-z]+)|\$\$/.test(node.textContent)) {
      rawTex.push(node.textContent.replace(/\s+/g, " ").trim().slice(0, 100));
    }
  }
  return {
    rendered: document.querySelector(".md-content") !== null,
    mathjax: Boolean(mj && mj.version),
    images: Array.from(document.images, (img) => ({src: img.currentSrc || img.src, ok: img.naturalWidth > 0})),
    math: document.querySelectorAll(".arithmatex").length,
    untypeset, texErrors, rawTex,
  };
})()
"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The built site, served on 127.0.0.1; yields its base URL and its folder."""
    site_dir = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", site_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-5000:]}"
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", site_dir
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chromium, str]]:
    """One Chromium with one tab for all pages; yields it and the tab's session id."""
    assert CHROMIUM is not None
    folder = tmp_path_factory.mktemp("chromium")
    chromium = Chromium(CHROMIUM, folder / "profile", folder / "chromium.log")
    try:
        target = chromium.call("Target.createTarget", url="about:blank")["targetId"]
        session = chromium.call("Target.attachToTarget", targetId=target, flatten=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            chromium.call(f"{domain}.enable", session["sessionId"])
        yield chromium, session["sessionId"]
    finally:
        chromium.close()


def visit(chromium: Chromium, session: str, url: str) -> tuple[dict, list[dict]]:
    """Open ``url`` in the tab; return the page's report and the browser's events for it."""
    chromium.events.clear()
    navigation = chromium.call("Page.navigate", session, url=url)
    assert "errorText" not in navigation, f"{url}: {navigation['errorText']}"
    chromium.wait_for("Page.loadEventFired")
    answer = chromium.call(
        "Runtime.evaluate",
        session,
        expression=PAGE_REPORT_JS,
        awaitPromise=True,
        returnByValue=True,
        timeout=PAGE_TIMEOUT_S * 1000,
    )
    if "exceptionDetails" in answer:
        raise AssertionError(f"{url}: the page check threw: {answer['exceptionDetails']}")
    return answer["result"]["value"], [e for e in chromium.events if e.get("sessionId") == session]


def problems(url: str, report: dict, events: list[dict]) -> list[str]:
    """What a reader of ``url`` would find wrong, from its report and the browser's events."""
    found = []
    local = urlsplit(url).netloc
    document_status = None
    optional: set[str] = set()  # request ids of OPTIONAL_REMOTE requests
    for event in events:
        method, params = event["method"], event["params"]
        if params.get("requestId") in optional or (
            method == "Log.entryAdded"
            and params["entry"].get("url", "").startswith(OPTIONAL_REMOTE)
        ):
            continue
        if method == "Network.requestWillBeSent":
            requested = urlsplit(params["request"]["url"])
            if params["request"]["url"].startswith(OPTIONAL_REMOTE):
                optional.add(params["requestId"])
            elif requested.scheme in ("http", "https", "ws", "wss") and requested.netloc != local:
                found.append(f"loads {params['request']['url']} from the network")
        elif method == "Network.responseReceived":
            response = params["response"]
            if params["type"] == "Document" and response["url"] == url:
                document_status = response["status"]
            elif response["status"] >= 400:
                found.append(f"HTTP {response['status']} for {response['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            found.append(f"failed to load a {params['type']}: {params['errorText']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            found.append(f"console error: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(f"uncaught: {details.get('exception', {}).get('description', details)}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            found.append(f"console error: {entry['text']} {entry.get('url', '')}".strip())
    if document_status != 200:
        found.append(f"the page answered HTTP {document_status}, not 200")
    if not report["rendered"]:
        found.append("no .md-content: the page did not render")
    found += [f"image did not load: {img['src']}" for img in report["images"] if not img["ok"]]
    if report["math"] and not report["mathjax"]:
        found.append(f"{report['math']} math elements but MathJax did not load")
    found += [f"math not typeset: {tex}" for tex in report["untypeset"]]
    found += [f"TeX error in: {tex}" for tex in report["texErrors"]]
    found += [f"raw TeX in the text: {text}" for text in report["rawTex"]]
    return found


def screenshot(chromium: Chromium, session: str, path: Path) -> None:
    """A full-page PNG of the open page."""
    size = chromium.call("Page.getLayoutMetrics", session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    png = chromium.call("Page.captureScreenshot", session, captureBeyondViewport=True, clip=clip)
    path.write_bytes(base64.b64decode(png["data"]))


PAGES = nav_pages()


@pytest.mark.slow  # the site's build, then about a second a page: under a minute in all
@needs_chromium
@pytest.mark.parametrize("page", PAGES)
def test_page_as_a_reader_sees_it(
    page: str, site: tuple[str, Path], browser: tuple[Chromium, str]
) -> None:
    chromium, session = browser
    url = site[0] + page_url(page)
    report, events = visit(chromium, session, url)
    if folder := os.environ.get("DOCS_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        screenshot(chromium, session, Path(folder) / (re.sub(r"\W+", "_", page) + ".png"))
    found = problems(url, report, events)
    assert not found, f"{page} ({url}):\n  " + "\n  ".join(found)


def test_nav_lists_pages() -> None:
    """The nav parser itself: pages in order, index pages map to their folder."""
    pages = nav_pages()
    assert pages[0] == "index.md" and "concepts/posterior.md" in pages
    assert [page_url(p) for p in ("index.md", "concepts/index.md", "concepts/posterior.md")] == [
        "",
        "concepts/",
        "concepts/posterior/",
    ]


# A page with one of each fault, using the site's own MathJax and configuration.
BROKEN_PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8">
<script src="../javascripts/mathjax.js"></script>
<script src="../javascripts/mathjax/tex-mml-chtml.js"></script>
</head><body><div class="md-content">
<p><span class="arithmatex">\(\alpha_t\)</span> renders;
<span class="arithmatex">\(\notamacro{x}\)</span> is undefined;
<span class="arithmatex">\(x^\)</span> does not parse;
<span class="arithmatex">\(\frac{1}{2\)</span> is not even found (its \) is in a group).</p>
<p>[ \sigma_t = 1 ] lost its delimiters to Markdown.</p>
<img src="missing.png" alt=""><img src="http://localhost:PORT/elsewhere.png" alt="">
<script>console.error("a script failed")</script>
</div></body></html>
"""


@needs_chromium
def test_the_checks_find_each_fault(site: tuple[str, Path], browser: tuple[Chromium, str]) -> None:
    """The checker itself: each fault of a deliberately broken page is reported."""
    base, site_dir = site
    port = urlsplit(base).port
    (site_dir / "_broken").mkdir()
    (site_dir / "_broken" / "index.html").write_text(BROKEN_PAGE.replace("PORT", str(port)))
    chromium, session = browser
    url = base + "_broken/"
    report, events = visit(chromium, session, url)
    found = "\n".join(problems(url, report, events))
    for expected in (
        r"TeX error in: \notamacro{x}",
        r"TeX error in: x^",
        r"math not typeset: \(\frac{1}{2\)",
        r"raw TeX in the text: [ \sigma_t = 1 ]",
        f"image did not load: {base}_broken/missing.png",
        f"HTTP 404 for {base}_broken/missing.png",
        f"loads http://localhost:{port}/elsewhere.png from the network",
        "console error: a script failed",
    ):
        assert expected in found, f"not reported: {expected}\nreported:\n{found}"
    assert r"\alpha_t" not in found
