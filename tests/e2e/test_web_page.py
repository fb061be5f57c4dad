"""The `GET /` explorer page in Debian's chromium (Playwright), against `python -m service`.

Screenshots and the measured timings go to test-artifacts/web/.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    FilePayload,
    Page,
    expect,
)

from tests.conftest import REPO_ROOT
from tests.e2e.web_page import (
    ARTIFACTS,
    DESKTOP,
    PHONE,
    SAMPLES,
    browser_page,
    choose_sample,
    chromium,
    coloured_share,
    doubt_codes,
    offered_samples,
    open_page,
    top_of,
    upload,
)
from tests.service.server import ServiceProcess
from tests.service.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

FASHION_SAMPLE = SAMPLES / "fashion-00000.png"  # an ankle boot
PHOTO_SAMPLE = SAMPLES / "photo-china.jpg"
DEFAULT_MODEL = "lenet5-fashion"
UNPAIRED_MODEL = "tiny-unpaired"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The committed LeNet-5 (no CAM) beside a tiny CNN with a GAP head (CAM), and a colour one
    whose first exported layer is not its first conv (its filters cannot pair with channels)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO_ROOT / "models" / DEFAULT_MODEL, root / DEFAULT_MODEL)
    write_tiny_model(root, "tiny-cnn", gap_head=True)
    unpaired = write_tiny_model(root, UNPAIRED_MODEL, color_mode="RGB", gap_head=True)
    metadata = json.loads((unpaired.path / "metadata.json").read_text())
    metadata["feature_maps"] = metadata["feature_maps"][1:]  # features.pool1, features.conv2
    (unpaired.path / "metadata.json").write_text(json.dumps(metadata, indent=2))
    log = tmp_path_factory.mktemp("logs") / "service.log"
    with ServiceProcess(
        log, model_repository=root, default_model=DEFAULT_MODEL, providers="cpu"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with browser_page(browser, viewport=DESKTOP) as page:
        yield page


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
    # A Fashion-MNIST image on the Fashion-MNIST model: no notice, and no status line left over.
    expect(page.locator("#doubts")).to_be_hidden()
    expect(page.locator("#busy")).to_be_hidden()
    expect(page.get_by_text(re.compile(r"^\s*Result:"))).to_have_count(0)
    # LeNet-5 has no GAP head: the CAM slot says so instead of showing a faded input.
    expect(page.locator("#cam-figure")).to_be_hidden()
    expect(page.locator("#cam-none")).to_be_visible()
    expect(page.locator("#cam-none")).to_contain_text("This model has no CAM")

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
    # Every channel shown: no "more" button.
    expect(page.locator("button.more")).to_have_count(0)
    # Conv layers (both signs) on the diverging scale are not washed out: most pixels of the
    # conv1 tiles carry colour, not the white of 0.
    conv1_tiles = "article[data-layer='features.conv1'] canvas.response"
    shares = [coloured_share(page, f"{conv1_tiles} >> nth={i}") for i in range(6)]
    assert sum(shares) / len(shares) > 0.5, shares
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
    page.set_input_files("#file-input", str(FASHION_SAMPLE))
    expect(page.locator("#result-section")).to_be_visible()
    # Claims to be a PNG: the service refuses it (400 invalid_image).
    page.set_input_files(
        "#file-input",
        files=[FilePayload(name="notes.png", mimeType="image/png", buffer=b"not an image")],
    )
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("data-code", "invalid_image")
    expect(page.locator("#error-message")).to_contain_text("Unsupported file")
    # the last image's prediction is not left under the error as if it were this file's
    expect(page.locator("#result-section")).to_be_hidden()
    expect(page.locator("#error-retry")).to_be_hidden()  # the same file would fail again
    # A request the service refuses for good, whatever its code: no Retry either.
    refusal = {"error": {"code": "invalid_option", "message": "no such option"}}
    page.route("**/classify?*", lambda route: route.fulfill(status=400, json=refusal))
    page.set_input_files("#file-input", str(FASHION_SAMPLE))
    expect(error).to_have_attribute("data-code", "invalid_option")
    expect(page.locator("#error-retry")).to_be_hidden()
    page.unroute("**/classify?*")
    # A GIF is refused in the page before any request.
    page.set_input_files(
        "#file-input", files=[FilePayload(name="a.gif", mimeType="image/gif", buffer=b"GIF89a")]
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


def test_samples_and_notice_follow_the_model(page: Page, service: ServiceProcess) -> None:
    manifest = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    fashion = [s["file"] for s in manifest if s["dataset"] == "fashion-mnist"]
    photos = [s["file"] for s in manifest if s["color_mode"] == "RGB"]
    assert len(fashion) == 10
    assert len(photos) >= 2
    open_page(page, service.base_url)
    # The greyscale Fashion-MNIST model is offered its own data set's images; the photos are
    # folded away below them.
    assert offered_samples(page, "samples") == fashion
    assert offered_samples(page, "samples-other") == photos
    expect(page.locator("#samples-other")).to_be_hidden()

    # A colour photo on it: the notice says plainly why the label deserves doubt.
    upload(page, PHOTO_SAMPLE)
    notice = page.locator("#doubts")
    expect(notice).to_be_visible()
    assert {"colour", "shrunk"} <= doubt_codes(page)
    expect(notice).to_contain_text("Unlike the images this model was trained on")
    expect(notice.locator("li[data-code=colour]")).to_contain_text("fashion-mnist")
    expect(notice.locator("li[data-code=shrunk]")).to_contain_text("224 × 149")
    # Placed between the heading and the bars, where the label is read.
    heading = page.get_by_role("heading", name="Top-5")
    assert top_of(heading) < top_of(notice) < top_of(page.locator("#predictions"))
    page.screenshot(path=str(ARTIFACTS / "notice.png"))

    # One of its own kind of images: no notice.
    choose_sample(page, FASHION_SAMPLE.name)
    expect(notice).to_be_hidden()

    # A colour model is offered the photos first.
    page.select_option("#model-select", UNPAIRED_MODEL)
    page.wait_for_function(
        "() => document.querySelector('#samples button.sample')?.dataset.file.endsWith('.jpg')"
    )
    assert offered_samples(page, "samples") == photos
    assert offered_samples(page, "samples-other") == fashion
    expect(page.locator("#samples-note")).to_contain_text("colour")


def test_filters_that_do_not_pair_are_shown_whole(page: Page, service: ServiceProcess) -> None:
    # Its first exported layer (features.pool1) is not its first conv's output: filter k is not
    # channel k's, so the filters are shown on their own, not beside the tiles.
    open_page(page, service.base_url, f"?model={UNPAIRED_MODEL}")
    choose_sample(page, "photo-pagoda.jpg")
    figure = page.locator("article[data-filters='features.conv1']")
    expect(figure).to_be_visible()
    expect(figure.locator("img")).to_have_count(1)
    assert figure.locator("img").evaluate("img => img.naturalWidth") > 0
    expect(page.locator("canvas.filter")).to_have_count(0)
    layers = page.locator("article.layer[data-layer]")
    assert layers.evaluate_all("els => els.map(e => e.dataset.layer)") == [
        "features.pool1",
        "features.conv2",
    ]


RULES_SCRIPT = """async () => {
  const { doubts } = await import("/static/js/fit.js");
  const { filtersPairWith } = await import("/static/js/views.js");
  const model = (mode, side, resize, classes) => ({
    input: { color_mode: mode, shape: [mode === "L" ? 1 : 3, side, side] },
    preprocessing: { resize, center_crop: side },
    labels: Array.from({ length: classes }, (_, i) => `c${i}`),
    training: { dataset: "fashion-mnist" },
  });
  const codes = (picture, detail, probabilities) => doubts(
    picture, detail, probabilities.map((probability, i) => ({ label: `c${i}`, probability })),
  ).map((d) => d.code).join(" ");
  const grey28 = model("L", 28, 28, 10);
  const rgb224 = model("RGB", 224, 256, 1000);
  const sure = [0.9, 0.02, 0.02, 0.02, 0.02];
  const picture = (width, height, colourShare) => ({ width, height, colourShare });
  return {
    fashionImage: codes(picture(28, 28, 0), grey28, sure),
    colourOnGrey: codes(picture(28, 28, 0.05), grey28, sure),
    justGreyEnough: codes(picture(28, 28, 0.049), grey28, sure),
    shrunk4: codes(picture(112, 112, 0), grey28, sure),
    shrunkMore: codes(picture(113, 113, 0), grey28, sure),
    photo: codes(picture(640, 427, 0.4), rgb224, sure),
    bigPhoto: codes(picture(4000, 3000, 0.4), rgb224, sure),
    greyPhoto: codes(picture(640, 427, 0.005), rgb224, sure),
    enlarged2: codes(picture(128, 128, 0.4), rgb224, sure),
    enlargedMore: codes(picture(127, 127, 0.4), rgb224, sure),
    aspect2: codes(picture(600, 300, 0.4), rgb224, sure),
    aspectMore: codes(picture(601, 300, 0.4), rgb224, sure),
    uniform: codes(null, grey28, Array(10).fill(0.1)),
    // top-5 of 1000 holding 5 %: the other 995 classes share 95 % evenly
    spreadRest: codes(null, rgb224, [0.01, 0.01, 0.01, 0.01, 0.01]),
    pairs: [
      ["features.conv1", "features.conv1"],
      ["conv1", "relu"],
      ["features.0.0", "features.0"],
      ["features.0", "features.3"],
      ["conv1", "layer1"],
      ["features.conv1", "features.pool1"],
    ].map(([filters, map]) => filtersPairWith(filters, map)),
  };
}"""


def test_doubt_and_pairing_rules_at_their_thresholds(page: Page, service: ServiceProcess) -> None:
    """fit.js's thresholds (docs/web.md) on made-up pictures and answers, in the page's code."""
    open_page(page, service.base_url)
    found = page.evaluate(RULES_SCRIPT)
    assert found == {
        "fashionImage": "",
        "colourOnGrey": "colour",
        "justGreyEnough": "",
        "shrunk4": "",
        "shrunkMore": "shrunk",
        "photo": "",
        "bigPhoto": "",  # 224 px models learnt from large photos shrunk: no "shrunk"
        "greyPhoto": "grey",
        "enlarged2": "",
        "enlargedMore": "enlarged",
        "aspect2": "",
        "aspectMore": "aspect",
        "uniform": "unsure",
        "spreadRest": "unsure",
        "pairs": [True, True, True, False, False, False],
    }


def test_phone_width_sample_and_cam(browser: Browser, service: ServiceProcess) -> None:
    with browser_page(browser, viewport=PHONE, device_scale_factor=2) as page:
        open_page(page, service.base_url, "?model=tiny-cnn")
        expect(page.locator("#model-select")).to_have_value("tiny-cnn")
        choose_sample(page, FASHION_SAMPLE.name)
        cam = page.locator("#cam-image")
        expect(cam).to_be_visible()
        expect(page.locator("#cam-none")).to_be_hidden()
        assert (cam.get_attribute("src") or "").startswith("data:image/png;base64,")
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
        page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)


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


def test_with_an_api_key_the_filters_are_shown_too(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The key typed into the page goes with every request, the filter grid's too (an <img>
    cannot send it: the grid is fetched and shown from an object URL)."""
    root = tmp_path_factory.mktemp("keyed")
    shutil.copytree(REPO_ROOT / "models" / DEFAULT_MODEL, root / DEFAULT_MODEL)
    log = tmp_path_factory.mktemp("logs") / "keyed.log"
    with (
        ServiceProcess(log, model_repository=root, providers="cpu", api_key="sekret") as keyed,
        browser_page(browser, viewport=DESKTOP) as page,
    ):
        page.goto(keyed.base_url + "/")
        expect(page.locator("#error")).to_be_visible()  # the models cannot be listed yet
        page.fill("#api-key-input", "sekret")
        page.locator("#api-key-input").dispatch_event("change")
        page.wait_for_selector("#model-form[data-ready=true]")
        upload(page, FASHION_SAMPLE)
        first = page.locator("article.layer").first
        expect(first.locator("button.tile.pair canvas.filter")).to_have_count(6)


def test_a_version_removed_under_the_page_is_dropped_on_retry(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Hot reload removes the version the page shows: classify says so, and Retry lists the
    models again and answers with what is left instead of asking for the gone version."""
    root = tmp_path_factory.mktemp("reloaded")
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models" / DEFAULT_MODEL / "1", root / DEFAULT_MODEL / version)
        meta_path = root / DEFAULT_MODEL / version / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "version": int(version)}))
    log = tmp_path_factory.mktemp("logs") / "reloaded.log"
    with (
        ServiceProcess(log, model_repository=root, providers="cpu", model_poll_seconds=1) as svc,
        browser_page(browser, viewport=DESKTOP) as page,
    ):
        open_page(page, svc.base_url)
        expect(page.locator("#version-select")).to_have_value("2")
        upload(page, FASHION_SAMPLE)
        shutil.rmtree(root / DEFAULT_MODEL / "2")
        deadline = time.monotonic() + 30
        while httpx.get(f"{svc.base_url}/v1/models").json()["models"][0]["versions"] != [1]:
            assert time.monotonic() < deadline, "version 2 was not unloaded"
            time.sleep(0.2)
        page.set_input_files("#file-input", str(FASHION_SAMPLE))
        expect(page.locator("#error")).to_be_visible()
        assert page.locator("#error").get_attribute("data-code") == "version_not_found"
        page.locator("#error-retry").click()
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator("#version-select option")).to_have_count(1)
        expect(page.locator("#version-select")).to_have_value("1")
        expect(page.locator("#predictions li")).to_have_count(5)
