"""The `GET /` explorer page in Debian's chromium (Playwright), against `python -m service`.

Screenshots and the measured timings go to test-artifacts/web/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.conftest import REPO_ROOT, require_executable
from tests.service.server import ServiceProcess
from tests.service.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
SAMPLES = REPO_ROOT / "service" / "static" / "samples"
FASHION_SAMPLE = SAMPLES / "fashion-00000.png"  # an ankle boot
DEFAULT_MODEL = "lenet5-fashion"
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


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The committed LeNet-5 (no CAM) beside a tiny CNN with a GAP head (CAM)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO_ROOT / "models" / DEFAULT_MODEL, root / DEFAULT_MODEL)
    write_tiny_model(root, "tiny-cnn", gap_head=True)
    log = tmp_path_factory.mktemp("logs") / "service.log"
    with ServiceProcess(
        log, model_repository=root, default_model=DEFAULT_MODEL, providers="cpu"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_executable("chromium", "chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        yield _launch(playwright, executable)


def _launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
    assert not errors, errors


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
    page.wait_for_selector("body[data-state=done]")
    return (time.perf_counter() - started) * 1000


def test_upload_shows_the_api_answer_and_layer_grids(page: Page, service: ServiceProcess) -> None:
    load_ms = open_page(page, service.base_url)
    navigation = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return {dom: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }"
    )
    result_ms = upload(page, FASHION_SAMPLE)
    in_page_ms = page.evaluate("() => performance.getEntriesByName('convserve:result')[0].duration")

    expected = httpx.post(
        f"{service.base_url}/v1/models/{DEFAULT_MODEL}/classify",
        content=FASHION_SAMPLE.read_bytes(),
        headers={"content-type": "image/png"},
        timeout=30,
    ).json()["results"][0]["predictions"]
    bars = page.locator("#predictions li")
    expect(bars).to_have_count(5)
    assert bars.first.get_attribute("data-label") == expected[0]["label"] == "Ankle boot"
    assert [bars.nth(i).get_attribute("data-label") for i in range(5)] == [
        p["label"] for p in expected
    ]
    expect(page.locator("#timing dt")).to_have_count(5)

    detail = httpx.get(f"{service.base_url}/v1/models/{DEFAULT_MODEL}", timeout=30).json()
    layers = page.locator("article.layer")
    names = [fm["layer"] for fm in detail["feature_maps"]]
    assert layers.evaluate_all("els => els.map(e => e.dataset.layer)") == names
    for i, fm in enumerate(detail["feature_maps"]):
        layer = layers.nth(i)
        expect(layer.locator("h3")).to_have_text(fm["layer"])
        expect(layer.locator(".badge.shape")).to_have_text(" × ".join(map(str, fm["shape"])))
        expect(layer.locator("button.tile")).to_have_count(min(16, fm["shape"][0]))
    # The first layer pairs each filter with its response.
    expect(layers.first.locator("button.tile.pair canvas.filter")).to_have_count(6)
    # input, every layer, classes
    expect(page.locator("#dims-table tbody tr")).to_have_count(len(names) + 2)
    expect(page.locator("#dims-table tbody tr").last).to_contain_text("10 classes")

    page.screenshot(path=str(ARTIFACTS / "desktop.png"), full_page=True)
    timings = {
        "page_ready_ms": round(load_ms, 1),
        "navigation_load_event_ms": round(navigation["load"], 1),
        "time_to_result_ms": round(result_ms, 1),
        "in_page_image_to_render_ms": round(in_page_ms, 1),
    }
    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


def test_channel_enlarges_with_its_colour_scale(page: Page, service: ServiceProcess) -> None:
    open_page(page, service.base_url)
    upload(page, FASHION_SAMPLE)
    tile = page.locator("article[data-layer='features.conv2'] button.tile").first
    channel = tile.get_attribute("data-channel")
    tile.focus()
    page.keyboard.press("Enter")  # keyboard-operable
    dialog = page.locator("#channel-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#channel-dialog-title")).to_have_text(
        f"features.conv2 · channel {channel}"
    )
    large = page.locator("#channel-large")
    assert large.evaluate("c => [c.width, c.height]") == [10, 10]
    assert large.bounding_box()["width"] >= 200  # type: ignore[index]
    expect(page.locator("#channel-scale-min")).not_to_be_empty()
    expect(page.locator("#channel-scale-max")).not_to_be_empty()
    large.hover()
    expect(page.locator("#channel-readout")).to_contain_text(") = ")
    page.screenshot(path=str(ARTIFACTS / "desktop-channel.png"))
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(tile).to_be_focused()


def test_invalid_files_show_an_error(page: Page, service: ServiceProcess) -> None:
    open_page(page, service.base_url)
    # Claims to be a PNG: the service refuses it (400 invalid_image).
    page.set_input_files(
        "#file-input",
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}],
    )
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-code", "invalid_image")
    expect(page.locator("#error-message")).to_contain_text("Unsupported file")
    # A GIF is refused in the page before any request.
    page.set_input_files(
        "#file-input", files=[{"name": "a.gif", "mimeType": "image/gif", "buffer": b"GIF89a"}]
    )
    expect(error).to_have_attribute("data-code", "unsupported_file")
    expect(page.locator("#error-message")).to_contain_text("image/gif")
    page.screenshot(path=str(ARTIFACTS / "error.png"))


def test_overloaded_service_offers_a_retry(page: Page, service: ServiceProcess) -> None:
    # A full queue cannot be caused on demand without flakiness: answer one request as the
    # service would (503 queue_full, Retry-After), then let the retry through to the real one.
    open_page(page, service.base_url)
    body = {"error": {"code": "queue_full", "message": "queue full"}}
    page.route(
        "**/classify?*",
        lambda route: route.fulfill(status=503, json=body, headers={"Retry-After": "1"}),
    )
    page.set_input_files("#file-input", str(FASHION_SAMPLE))
    expect(page.locator("#error-message")).to_contain_text("overloaded")
    expect(page.locator("#error-message")).to_contain_text("Retry in 1 s")
    page.unroute("**/classify?*")
    page.locator("#error-retry").click()
    page.wait_for_selector("body[data-state=done]")
    expect(page.locator("#error")).to_be_hidden()


def test_phone_width_sample_and_cam(browser: Browser, service: ServiceProcess) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_page(page, service.base_url, "?model=tiny-cnn")
        expect(page.locator("#model-select")).to_have_value("tiny-cnn")
        page.locator("button.sample").first.click()
        page.wait_for_selector("body[data-state=done]")
        cam = page.locator("#cam-image")
        expect(cam).to_be_visible()
        assert (cam.get_attribute("src") or "").startswith("data:image/png;base64,")
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
        page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    finally:
        context.close()


def test_page_headers_and_static_allow_list(service: ServiceProcess) -> None:
    page = httpx.get(f"{service.base_url}/", timeout=30)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in page.text.replace('<script type="module" src=', "")
    script = httpx.get(f"{service.base_url}/static/js/main.js", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript")
    manifest = httpx.get(f"{service.base_url}/static/samples/samples.json", timeout=30).json()
    for sample in manifest["samples"]:
        assert (SAMPLES / sample["file"]).is_file()
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/service/app.py", "/static/"):
        response = httpx.get(f"{service.base_url}{path}", timeout=30)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
