"""The explorer page on a 224 × 224 colour photo model (ResNet-18), in Debian's chromium.

The ResNet-18 is torchvision's network with random weights (seeded), exported by
`python -m training.export --arch resnet18 --weights FILE` into a temporary repository: the real
shape of an ImageNet model (stem + layer1..layer4, 64–512 channels, a CAM, RGB filters) without
downloading anything. Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from playwright.sync_api import Browser, Page, expect

from tests.conftest import REPO_ROOT
from tests.e2e.web_page import (
    ARTIFACTS,
    DESKTOP,
    PHONE,
    PICTURE_DOUBTS,
    SAMPLES,
    browser_page,
    choose_sample,
    chromium,
    coloured_share,
    doubt_codes,
    native_predictions,
    offered_samples,
    open_page,
)
from tests.service.server import ServiceProcess
from training.export import cli as export_cli

pytestmark = pytest.mark.slow

RESNET = "resnet18-random"
LENET = "lenet5-fashion"
PHOTO = "photo-pagoda.jpg"  # 224 × 224: no notice about the picture itself
WIDE_PHOTO = "photo-lake.jpg"  # 3:1
FASHION = "fashion-00000.png"
MAX_SPREAD = 0.6  # fit.js: entropy / ln(classes) from which the answer is called unsure
PAGE_CHANNELS = 16  # the page's default "Channels per layer"
EXPORT_SEED = 0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """ResNet-18 (random weights, ImageNet labels) beside the committed LeNet-5."""
    root = tmp_path_factory.mktemp("models")
    weights = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.manual_seed(EXPORT_SEED)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    export_cli(
        ["--arch", "resnet18", "--weights", str(weights), "--labels", "imagenet"]
        + ["--name", RESNET, "--repository", str(root), "--threads", "2"]
    )
    shutil.copytree(REPO_ROOT / "models" / LENET, root / LENET)
    log = tmp_path_factory.mktemp("logs") / "service.log"
    with ServiceProcess(
        log, model_repository=root, default_model=RESNET, providers="cpu"
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


def spread_share(base_url: str, model: str, path: Path, classes: int) -> float:
    """Entropy of the native API's full answer over ln(classes), as fit.js measures it."""
    answer = native_predictions(base_url, model, path, classes)
    probabilities = [float(p["probability"]) for p in answer]
    entropy = -sum(p * math.log(p) for p in probabilities if p > 0)
    return entropy / math.log(classes)


def test_colour_model_shows_colour_input_cam_and_filters(
    page: Page, service: ServiceProcess
) -> None:
    open_page(page, service.base_url, f"?model={RESNET}")
    # Photos are offered to a colour model; the Fashion-MNIST images are folded away.
    suited = offered_samples(page, "samples")
    assert PHOTO in suited
    assert all(name.startswith("photo-") for name in suited)
    assert all(name.startswith("fashion-") for name in offered_samples(page, "samples-other"))
    choose_sample(page, PHOTO)

    expected = native_predictions(service.base_url, RESNET, SAMPLES / PHOTO, 5)
    bars = page.locator("#predictions li")
    assert bars.evaluate_all("els => els.map(e => e.dataset.label)") == [
        p["label"] for p in expected
    ]
    # The input as the model sees it, and the CAM's base, are the colour photo at 224 × 224.
    model_input = page.locator("#model-input")
    assert model_input.evaluate("c => [c.width, c.height]") == [224, 224]
    assert coloured_share(page, "#model-input") > 0.3
    assert coloured_share(page, "#cam-base") > 0.3
    expect(page.locator("#cam-figure")).to_be_visible()
    expect(page.locator("#cam-none")).to_be_hidden()
    assert (page.locator("#cam-image").get_attribute("src") or "").startswith("data:image/png")

    # No notice about the picture; "unsure" exactly when the native answer is spread out.
    classes = 1000
    unsure = spread_share(service.base_url, RESNET, SAMPLES / PHOTO, classes) >= MAX_SPREAD
    codes = doubt_codes(page)
    assert not codes & PICTURE_DOUBTS, codes
    assert ("unsure" in codes) == unsure

    # Stem + four stages; the stem's tiles pair each filter, in colour, with its response.
    layers = page.locator("article.layer[data-layer]")
    assert layers.evaluate_all("els => els.map(e => e.dataset.layer)") == [
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    filters = layers.first.locator("canvas.filter")
    expect(filters).to_have_count(PAGE_CHANNELS)
    expect(layers.first.locator(".hint")).to_contain_text("colour")
    shares = [
        coloured_share(page, f"article[data-layer=relu] canvas.filter >> nth={i}") for i in range(4)
    ]
    assert min(shares) > 0.5, shares
    page.screenshot(path=str(ARTIFACTS / "resnet-desktop.png"), full_page=True)


def test_large_layers_show_more_channels_on_demand(page: Page, service: ServiceProcess) -> None:
    open_page(page, service.base_url, f"?model={RESNET}")
    choose_sample(page, PHOTO)
    layer = page.locator("article[data-layer=layer4]")
    expect(layer.locator("button.tile")).to_have_count(PAGE_CHANNELS)
    expect(layer.locator(".layer-note")).to_have_text(
        f"{PAGE_CHANNELS} of 512 channels, most active first"
    )
    first = layer.locator("button.tile").evaluate_all("els => els.map(e => e.dataset.channel)")
    legend = layer.locator(".scale-legend").inner_text()
    more = layer.locator("button.more")
    expect(more).to_have_text(f"Show {PAGE_CHANNELS} more ({2 * PAGE_CHANNELS} of 512)")
    more.click()

    layer = page.locator("article[data-layer=layer4]")
    expect(layer.locator("button.tile")).to_have_count(2 * PAGE_CHANNELS)
    channels = layer.locator("button.tile").evaluate_all("els => els.map(e => e.dataset.channel)")
    assert channels[:PAGE_CHANNELS] == first  # the most active first, as before
    assert len(set(channels)) == len(channels)
    assert layer.locator(".scale-legend").inner_text() == legend  # the same colours
    # Keyboard users land on the first new tile.
    assert page.evaluate("() => document.activeElement.dataset.channel") == channels[PAGE_CHANNELS]
    # The other layers are left as they were.
    expect(page.locator("article[data-layer=layer3] button.tile")).to_have_count(PAGE_CHANNELS)


def test_pictures_unlike_a_photo_model_get_a_notice(page: Page, service: ServiceProcess) -> None:
    open_page(page, service.base_url, f"?model={RESNET}")
    choose_sample(page, WIDE_PHOTO)
    assert "aspect" in doubt_codes(page)
    expect(page.locator("#doubts li[data-code=aspect]")).to_contain_text("3.0:1")
    # A 28 × 28 greyscale Fashion-MNIST image on the 224 × 224 colour model.
    choose_sample(page, FASHION)
    assert {"grey", "enlarged"} <= doubt_codes(page)
    expect(page.locator("#doubts li[data-code=enlarged]")).to_contain_text("28 × 28")


def test_colour_model_at_phone_width(browser: Browser, service: ServiceProcess) -> None:
    with browser_page(browser, viewport=PHONE, device_scale_factor=2) as page:
        open_page(page, service.base_url, f"?model={RESNET}")
        choose_sample(page, PHOTO)
        expect(page.locator("#cam-image")).to_be_visible()
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
        page.screenshot(path=str(ARTIFACTS / "resnet-phone.png"), full_page=True)
