"""Start TensorBoard on a log folder and look at it as a user does: its HTTP data API, and the page in headless Chromium.

Used by ``tests/test_dashboard.py`` and by ``make dashboard-screenshot``, which writes the README's
screenshot: ``python -m tools.dashboard LOGDIR OUTPUT.png [TAG_FILTER]``. Chromium is Debian's (``/usr/bin/chromium``,
or ``$CHROMIUM``) driven by Playwright: no browser is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# what the machine's closed network and a root user need (see the README's test section)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def scalar_tags_on_disk(logdir: Path) -> dict[str, set[str]]:
    """Each run under ``logdir`` (its folder relative to ``logdir``) with the scalar tags its event files hold."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({path.parent for path in logdir.rglob("events.out.tfevents.*")})
    return {folder.relative_to(logdir).as_posix(): set(EventAccumulator(str(folder)).Reload().Tags()["scalars"]) for folder in folders}


@contextlib.contextmanager
def tensorboard(logdir: Path, timeout: float = 120.0) -> Iterator[str]:
    """A ``tensorboard`` server on ``logdir`` (loopback, a port the OS picks) until the block ends; yields its base URL.

    The URL is yielded once the server has loaded what the event files hold: every run with every scalar tag
    (``timeout`` only bounds a hang). The server's log is read as it comes, so a full pipe never stalls it.
    """
    expected = scalar_tags_on_disk(logdir)
    command = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(server.stderr), daemon=True)  # (line by line, as they come)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not loaded(server_url(log), expected):
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"exited with status {server.poll()}" if server.poll() is not None else f"not ready after {timeout:.0f} s"
                raise RuntimeError(f"tensorboard on {logdir} {state}: {''.join(log)[-2000:]}")
            time.sleep(0.2)
        yield server_url(log)
    finally:
        server.terminate()
        server.wait(timeout=30)
        reader.join(timeout=30)


def server_url(log: list[str]) -> str | None:
    """The URL TensorBoard announced in its log ("TensorBoard 2.x at http://127.0.0.1:PORT/ (Press CTRL+C to quit)"), if yet."""
    announced = [line for line in log if " at http://" in line]
    return announced[0].split(" at ", 1)[1].split()[0].rstrip("/") if announced else None


def loaded(url: str | None, expected: dict[str, set[str]]) -> bool:
    """Whether the server listens at ``url`` and serves every run of ``expected`` with (at least) its scalar tags."""
    if url is None:
        return False
    try:
        served = get_json(url, "/data/plugin/scalars/tags")
    except OSError:
        return False
    return all(set(served.get(run, ())) >= tags for run, tags in expected.items())


def get_json(url: str, path: str, body: dict | None = None) -> object:
    """GET (or, with ``body``, POST as JSON) one of TensorBoard's data endpoints."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def hparams_session_groups(url: str) -> list[dict]:
    """The runs the HParams plugin lists, with their hyper-parameters and metrics."""
    body = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 100,
    }
    return get_json(url, "/data/plugin/hparams/session_groups", body)["sessionGroups"]


@contextlib.contextmanager
def browser_page() -> Iterator[object]:
    """A page of headless Chromium (a fresh profile), closed when the block ends."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900}
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def render_time_series(url: str, run: str, tag: str, screenshot: Path | None = None) -> dict[str, str]:
    """Open the Time Series page on ``tag``'s card; return the row its data table shows for ``run`` ({column: text}).

    The row (run, smoothed and raw value, step, relative time of the last point) appears once the card has its data.
    """
    with browser_page() as page:
        page.goto(f"{url}/?pinnedCards=&tagFilter={tag}#timeseries", wait_until="networkidle")
        card = page.locator("scalar-card-component").filter(has_text=tag).first
        row = card.locator("tb-data-table-content-row").filter(has_text=run).first
        row.wait_for(timeout=60_000)
        header = card.locator("tb-data-table-header-cell").all_inner_texts()
        shown = dict(zip(header, row.locator("tb-data-table-content-cell").all_inner_texts(), strict=True))
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            painted(page)
            page.screenshot(path=str(screenshot))
        return {column: text for column, text in shown.items() if column}


def painted(page) -> None:
    """Return once the browser has painted two more frames: what the page has drawn so far is on screen."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


# a line the chart drew through at least two points: its SVG path has a segment ("L"); a margin chart's band likewise
DRAWN_LINES = "path.line[d*='L']"
DRAWN_BANDS = "path.area[d*='L']"
LINE_CARDS, MARGIN_CARDS = "tf-custom-scalar-multi-line-chart-card", "tf-custom-scalar-margin-chart-card"


def render_custom_scalars(
    url: str, screenshot: Path | None = None, expected: dict[str, int] | None = None, margin: bool = False
) -> dict[str, int]:
    """Open the Custom Scalars page showing raw values (smoothing 0, outliers in scale); per chart, its lines of two points or more.

    ``margin``: read the margin charts instead, and count their bands (one per run that has the chart's three tags).

    The charts draw as their data arrive: with ``expected`` the page is read once it shows that (or after a minute,
    whatever it shows then); without, once two readings a second apart agree.
    """
    with browser_page() as page:
        # (TensorBoard's dashboards keep these settings in the URL's hash)
        page.goto(f"{url}/#custom_scalars&_smoothingWeight=0", wait_until="networkidle")
        cards, drawn_element = page.locator(MARGIN_CARDS if margin else LINE_CARDS), DRAWN_BANDS if margin else DRAWN_LINES
        # (a band of zero height, runs that agree exactly, is drawn but not "visible")
        cards.first.locator(drawn_element).first.wait_for(state="attached" if margin else "visible", timeout=60_000)
        page.get_by_role("checkbox", name="Ignore outliers in chart scaling").uncheck()

        def drawn_lines() -> dict[str, int]:
            # (the title is the Polymer card's own property: its heading is drawn in shadow DOM)
            return {cards.nth(i).evaluate("card => card.title"): cards.nth(i).locator(drawn_element).count() for i in range(cards.count())}

        deadline, previous = time.monotonic() + 60, None
        while True:
            drawn = drawn_lines()
            if drawn == (expected if expected is not None else previous) or time.monotonic() > deadline:
                break
            previous = drawn
            page.wait_for_timeout(1000)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        return drawn


def render_images(url: str, tag: str, screenshot: Path) -> None:
    """Open the Images page filtered to ``tag`` and take a screenshot once its last image has loaded."""
    with browser_page() as page:
        page.goto(f"{url}/?tagFilter={tag}#images", wait_until="networkidle")
        image = page.locator("img[src*='individualImage'], img[src*='images/individualImage']").last
        image.wait_for(timeout=60_000)
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=60_000)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))


def main(argv: list[str]) -> None:
    """``python -m tools.dashboard LOGDIR OUTPUT.png [VIEW]``: a screenshot of the first run's Time Series cards matching VIEW
    (a tag filter), of the Custom Scalars page (VIEW ``custom_scalars``), or of the Images page (VIEW ``images:TAG``)."""
    logdir, output, view = Path(argv[0]), Path(argv[1]), argv[2] if len(argv) > 2 else "val/acc"
    with tensorboard(logdir) as url:
        runs = get_json(url, "/data/runs")
        if view == "custom_scalars":
            seen = render_custom_scalars(url, screenshot=output)
        elif view.startswith("images:"):
            render_images(url, view.removeprefix("images:"), output)
            seen = "images"
        else:
            seen = render_time_series(url, runs[0], view, screenshot=output)
    print(f"dashboard: {output} ({runs[0]}: {seen})")


if __name__ == "__main__":
    main(sys.argv[1:])
