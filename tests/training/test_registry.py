from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.training.archs import REQUIRED
from training.errors import UserError
from training.models.lenet import LeNet5
from training.registry import build_model, check_input_size, get_spec, list_models, register_model
from training.train import cli


def test_registry_lists_required_architectures() -> None:
    assert set(list_models()) >= REQUIRED


def test_list_archs_cli_prints_names(capsys: pytest.CaptureFixture[str]) -> None:
    cli(["--list-archs"])
    # Our own and every torchvision classifier.
    assert set(capsys.readouterr().out.split()) >= REQUIRED | {
        "mobilenet_v3_small",
        "squeezenet1_0",
    }


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("lenet5", feature_layers=lambda m: [])(lambda **kw: nn.Identity())


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"unknown architecture 'nope'.*lenet5.*resnet18"):
        build_model("nope", 10)


def test_bad_builder_option_is_a_user_error() -> None:
    with pytest.raises(UserError, match="bad options"):
        build_model("lenet5", 10, 1, 28, wings=2)


def test_any_torchvision_classifier_by_name() -> None:
    model = build_model("mobilenet_v3_small", 7, in_channels=1, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)
    assert get_spec("mobilenet_v3_small").feature_layers(model)[0] == "features.0"


@pytest.mark.parametrize("arch", ["vgg11", "vgg13_bn"])
def test_every_vgg_gets_the_small_input_head(arch: str) -> None:
    """Not only vgg16/vgg19: at 32 px torchvision's 7×7×512 → 4096 head alone would be 120 M
    weights (1.5 GB checkpoints for a toy run)."""
    model = build_model(arch, num_classes=3, in_channels=1, image_size=32)
    assert sum(p.numel() for p in model.parameters()) < 20_000_000
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert get_spec(arch).feature_layers(model)


def test_lenet5_layout() -> None:
    model = LeNet5(num_classes=10, batch_norm=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 6, (5, 5)),
        (6, 16, (5, 5)),
    ]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [
        (16 * 5 * 5, 120),
        (120, 84),
        (84, 10),
    ]
    assert get_spec("lenet5").feature_layers(model) == [
        "features.conv1", "features.relu1", "features.pool1",
        "features.conv2", "features.relu2", "features.pool2",
    ]  # fmt: skip


def test_too_small_an_input_is_refused_before_training() -> None:
    model = build_model("vit_b_16", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(UserError, match="vit_b_16 cannot take 1x28x28 inputs.*--image-size 224"):
        check_input_size(model, "vit_b_16", 1, 28)
    # a net that only needs a little more is told how little, not its native 224
    densenet = build_model("densenet121", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(UserError, match="try --image-size 32, the smallest of 32, 48"):
        check_input_size(densenet, "densenet121", 1, 28)


def test_googlenet_trains_on_its_main_output() -> None:
    """Its auxiliary heads are off unless asked for: training reads one tensor."""
    model = build_model("googlenet", num_classes=10, in_channels=1, image_size=32).train()
    out = model(torch.zeros(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 10)
