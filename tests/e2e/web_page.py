"""Driving the explorer page in Debian's chromium (Playwright): browser, pages, and reading what
they show."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    sync_playwright,
)

from tests.conftest import REPO_ROOT, require_executable

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
SAMPLES = REPO_ROOT / "service" / "static" / "samples"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000
# A 4xx/5xx answer is logged by chromium as a console error; the page handles it (error box).
HANDLED_HTTP_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of")
# The notice's codes about the picture itself (fit.js), as opposed to "unsure" (the answer).
PICTURE_DOUBTS = {"colour", "grey", "enlarged", "shrunk", "aspect"}


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright (skipped locally, failed in CI, when missing)."""
    executable = require_executable("chromium", "chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        yield playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def watch_console(page: Page) -> list[str]:
    """Uncaught errors, console errors and warnings of `page` from now on, as they come."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"} and not HANDLED_HTTP_ERROR.match(message.text):
            problems.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda err: problems.append(f"uncaught: {err}"))
    return problems


@contextmanager
def browser_page(browser: Browser, **options: Any) -> Iterator[Page]:
    """A page in a new context (`options`: viewport...); fails on any console problem."""
    context = browser.new_context(**options)
    page = context.new_page()
    problems = watch_console(page)
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def open_page(page: Page, base_url: str, query: str = "") -> float:
    """Load the page until its model metadata is shown; returns the wall time in ms."""
    started = time.perf_counter()
    page.goto(f"{base_url}/{query}")
    page.wait_for_selector("#model-form[data-ready=true]")
    return (time.perf_counter() - started) * 1000


def upload(page: Page, path: Path) -> float:
    """Choose `path` in the file picker and wait for the result; returns the wall time in ms."""
    started = time.perf_counter()
    page.set_input_files("#file-input", str(path))
    wait_for_result(page, path.name)
    return (time.perf_counter() - started) * 1000


def choose_sample(page: Page, name: str) -> None:
    """Select the bundled sample `name` (unfolding the other samples if it is there)."""
    button = page.locator(f"button.sample[data-file='{name}']")
    if not button.is_visible():
        page.locator("#samples-other-details > summary").click()
    button.click()
    wait_for_result(page, name)


def wait_for_result(page: Page, name: str) -> None:
    """Until the page shows its answer for the image `name` (not the one before it)."""
    page.wait_for_function(
        "name => document.body.dataset.state === 'done'"
        " && document.querySelector('#original-image').alt.endsWith(name)",
        arg=name,
    )


def doubt_codes(page: Page) -> set[str]:
    """The reasons in the notice beside the top-5 (empty when it is hidden)."""
    notice = page.locator("#doubts")
    if not notice.is_visible():
        return set()
    return set((notice.get_attribute("data-codes") or "").split())


def top_of(locator: Locator) -> float:
    return float(locator.evaluate("e => e.getBoundingClientRect().top"))


def offered_samples(page: Page, list_id: str) -> list[str]:
    files: list[str] = page.locator(f"#{list_id} button.sample").evaluate_all(
        "buttons => buttons.map(b => b.dataset.file)"
    )
    return files


def native_predictions(base_url: str, model: str, path: Path, top_k: int) -> list[dict[str, Any]]:
    """The native API's predictions for the file `path`."""
    kind = "image/png" if path.suffix == ".png" else "image/jpeg"
    response = httpx.post(
        f"{base_url}/v1/models/{model}/classify",
        params={"top_k": top_k},
        content=path.read_bytes(),
        headers={"content-type": kind},
        timeout=60,
    )
    response.raise_for_status()
    predictions: list[dict[str, Any]] = response.json()["results"][0]["predictions"]
    return predictions


def coloured_share(page: Page, selector: str) -> float:
    """Share of the pixels of the canvas `selector` whose max − min of R, G, B is at least 24."""
    share: float = page.locator(selector).evaluate(
        """canvas => {
          const { data } = canvas.getContext("2d", { willReadFrequently: true })
            .getImageData(0, 0, canvas.width, canvas.height);
          let coloured = 0;
          for (let i = 0; i < data.length; i += 4) {
            const channels = [data[i], data[i + 1], data[i + 2]];
            if (Math.max(...channels) - Math.min(...channels) >= 24) coloured++;
          }
          return coloured / (data.length / 4);
        }"""
    )
    return share
