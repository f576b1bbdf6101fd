"""Classifier architectures, the registry and the committed weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cxr3_rows, requires_cxr3

from cxr_core import settings
from cxr_core.models import (
    ModelUnavailableError,
    VBreathNet,
    build_model,
    count_params,
    load_classifier,
    weights_path,
)


def test_vbreathnet_parameter_counts_match_paper() -> None:
    counts = count_params(VBreathNet())
    assert counts["trainable"] == 790_307  # PyTorch count
    assert counts["keras_total"] == 792_291  # the paper's (Keras) count, BN running stats included


def test_vbreathnet_shapes_and_eval_determinism() -> None:
    torch.manual_seed(0)
    net = VBreathNet().eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.inference_mode():
        a, b = net(x), net(x)
    assert a.shape == (2, 3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="divisible"):
        VBreathNet(input_size=100)


def test_vbreathnet_train_mode_is_stochastic() -> None:
    torch.manual_seed(0)
    net = VBreathNet(input_size=64).train()
    x = torch.rand(4, 3, 64, 64)
    assert not torch.equal(net(x), net(x))  # dropout active in training only


@pytest.mark.parametrize("name", ["densenet121", "mobilenet_v2", "vgg16"])
def test_baselines_forward_and_head(name: str) -> None:
    net, _ = build_model(name, imagenet=False)
    net.eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 64, 64))
        emb = net.embed(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, len(settings.CLASSES))
    assert emb.ndim == 2 and emb.shape[1] == net.head[2].in_features


def test_mobilenet_uses_shared_imagenet_weights_when_present() -> None:
    net, source = build_model("mobilenet_v2")
    if not settings.MOBILENET_V2_IMAGENET.is_file():
        assert source == ""
        pytest.skip(f"ImageNet weights not found at {settings.MOBILENET_V2_IMAGENET}")
    assert "ImageNet" in source
    ref = torch.load(settings.MOBILENET_V2_IMAGENET, weights_only=True)
    first = next(iter(ref))
    assert torch.equal(net.features.state_dict()[first], ref[first])


def test_missing_weights_raise_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    load_classifier.cache_clear()
    try:
        with pytest.raises(ModelUnavailableError, match="python -m cxr_core.train --model vgg16"):
            load_classifier("vgg16")
    finally:
        load_classifier.cache_clear()


@requires_cxr3
@pytest.mark.skipif(not weights_path("vbreathnet").is_file(), reason="weights/vbreathnet.pt not trained yet")
def test_committed_vbreathnet_reproduces_its_model_card_through_the_app_path() -> None:
    """The shipped weights, run through load_image -> predict (the app's path), give the test accuracy
    that the model card reports (computed in training from the decoded cache, in bf16): a drift in
    preprocessing, weights or calibration shows up here. It also has to be far above chance.

    The >= 90 % bar on 90 test images is checked in the next test."""
    from cxr_core.classify import predict
    from cxr_core.io import load_image

    clf = load_classifier("vbreathnet")
    rows = cxr3_rows("test")
    correct = sum(predict(load_image(settings.CXR3_DIR / r["path"]), clf).predicted == r["label"] for r in rows)
    accuracy = correct / len(rows)
    assert len(rows) == clf.card["metrics"]["test"]["n"]
    assert abs(accuracy - clf.card["metrics"]["test"]["accuracy"]) <= 0.01, f"{accuracy:.4f} vs card"
    assert accuracy > 0.8  # chance is 1/3


@requires_cxr3
@pytest.mark.skipif(not weights_path("vbreathnet").is_file(), reason="weights/vbreathnet.pt not trained yet")
def test_committed_vbreathnet_scores_at_least_90_percent_on_90_test_images() -> None:
    """The issue's bar, on the suite's usual seeded sample (seed 0) of the test split, through the app's path.
    This sample scores 87/90; the whole test split is at 90.0 % (model card), so the margin here is
    larger than the model's: the card, not this test, is the accuracy claim."""
    from cxr_core.classify import predict
    from cxr_core.io import load_image

    clf = load_classifier("vbreathnet")
    rows = cxr3_rows("test", n=90)
    correct = sum(predict(load_image(settings.CXR3_DIR / r["path"]), clf).predicted == r["label"] for r in rows)
    assert correct / 90 >= 0.90, f"{correct}/90"


def test_registry_carries_what_differs_between_models() -> None:
    """Adding a classifier touches only SPECS: builder, family, sizes, optimiser, paper figures."""
    from cxr_core.models import SPECS, load_classifier
    from cxr_core.preprocess import image_to_tensor

    for name, spec in SPECS.items():
        net, _ = spec.build(spec.default_size if spec.size_dependent else 64, False)
        assert isinstance(net.cam_layer, torch.nn.Module), name
        assert spec.optimizer in {"RMSprop", "Adam"}
    assert [n for n, s in SPECS.items() if s.is_paper_model] == ["vbreathnet"]
    assert SPECS["vbreathnet"].paper_test_accuracy == 0.9684 and SPECS["vbreathnet"].paper_params_total == 792_291
    assert any("half width" in d for d in SPECS["vgg16"].scratch_deviations)
    clf = load_classifier(settings.DEFAULT_CLASSIFIER)  # the shipped weights
    pixels = np.random.default_rng(0).random((300, 280), dtype=np.float32)
    x = clf.to_input(pixels)
    assert x.shape[0] == 1 and x.shape[2:] == (clf.input_size, clf.input_size)
    assert torch.equal(x, image_to_tensor(pixels, clf.family, clf.input_size))
