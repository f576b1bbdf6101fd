"""Model registry: one name per classifier, its input family, and loading of trained weights.

`load_classifier(name)` is the only way the app, CLIs and benchmark get a trained model, so
weights are always read the same way (`torch.load(..., weights_only=True)`) and an untrained
model can never be shown as if it were trained: missing weights raise `ModelUnavailableError`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cxr_core import settings
from cxr_core.models.baselines import TransferNet, build_baseline
from cxr_core.models.vbreathnet import VBreathNet


class ModelUnavailableError(RuntimeError):
    """No trained weights for this model in weights/; the message says how to train them."""


# (input size, use ImageNet[, number of classes]) -> (net, source); the class count defaults to cxr3's
Builder = Callable[..., "tuple[nn.Module, str]"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that differs between classifiers, so adding one touches only this registry.

    The CAM layer is the network's own `cam_layer` property (see docs/explain.md per model).
    """

    name: str
    display_name: str
    family: str  # preprocessing family, see cxr_core.preprocess.FAMILIES
    default_size: int
    paper_params_total: int | None  # Table 3 of the paper, Keras count
    build: Builder = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    optimizer: str = "Adam"  # full-network training: "RMSprop" (the paper's V-BreathNet) or "Adam"
    paper_test_accuracy: float | None = None  # the paper's reported test accuracy, where it gives one
    is_paper_model: bool = False  # the paper's own architecture (trained from scratch by design)
    size_dependent: bool = False  # the architecture changes with the input size (rebuild per size)
    scratch_size: int = 128  # input px when trained from scratch without ImageNet weights (CPU cost)
    scratch_deviations: tuple[str, ...] = ()  # card deviations when trained from scratch
    deviations: tuple[str, ...] = ()  # card deviations always (recipe choices of ours)


def _vbreathnet(size: int, imagenet: bool, num_classes: int = len(settings.CLASSES)) -> tuple[nn.Module, str]:
    return VBreathNet(num_classes=num_classes, input_size=size), ""


def _baseline(name: str) -> Builder:
    return lambda size, imagenet, num_classes=len(settings.CLASSES): build_baseline(
        name, imagenet=imagenet, num_classes=num_classes)


SPECS: dict[str, ModelSpec] = {
    "vbreathnet": ModelSpec(
        "vbreathnet", "V-BreathNet", "vbreathnet", settings.VBREATHNET_SIZE, 792_291, _vbreathnet,
        optimizer="RMSprop", paper_test_accuracy=0.9684, is_paper_model=True, size_dependent=True,
        deviations=("Per-image intensity stretch (1st-99th percentile) before the paper's rescaling.",)),
    "densenet121": ModelSpec("densenet121", "DenseNet121", "imagenet", settings.BASELINE_SIZE, 8_217_667,
                             _baseline("densenet121")),
    "mobilenet_v2": ModelSpec("mobilenet_v2", "MobileNetV2", "imagenet", settings.BASELINE_SIZE, 3_733_059,
                              _baseline("mobilenet_v2")),
    "vgg16": ModelSpec(
        "vgg16", "VGG16", "imagenet", settings.BASELINE_SIZE, 15_305_027, _baseline("vgg16"),
        scratch_deviations=("VGG16-BN at half width (every layer's channels halved) to stay under the "
                            f"{settings.WEIGHT_BUDGET_MB} MB weight budget.",)),
}


def build_model(name: str, input_size: int | None = None, imagenet: bool = True,
                num_classes: int = len(settings.CLASSES)) -> tuple[nn.Module, str]:
    """A fresh network and where its initial weights came from ('' = random init).

    `num_classes` is the width of the output layer: cxr3's three by default, the folder's classes
    for a model retrained on a hospital's own classes (the checkpoint then carries their names)."""
    spec = SPECS[name]
    return spec.build(input_size or spec.default_size, imagenet, num_classes)


def count_params(model: nn.Module) -> dict[str, int]:
    """Total/trainable as PyTorch counts them, plus the Keras-style total (BN running stats included)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bn_stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return {"total": total, "trainable": trainable, "keras_total": total + bn_stats}


def freeze(module: nn.Module, eval_mode: bool = True) -> nn.Module:
    """No parameter of `module` needs a gradient (and eval mode unless told otherwise).

    Inference and frozen backbones never build a parameter graph; the Grad-CAM code relies on this
    (see cxr_core.explain) and makes only the target layer's output a leaf.
    """
    if eval_mode:
        module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    """`<weights_dir>/<name>.pt`; `weights_dir` defaults to settings.WEIGHTS_DIR (read at call time)."""
    return Path(weights_dir or settings.WEIGHTS_DIR) / f"{name}.pt"


def card_path(name: str, weights_dir: Path | None = None) -> Path:
    return Path(weights_dir or settings.WEIGHTS_DIR) / f"{name}.json"


def read_card(name: str, weights_dir: Path | None = None) -> dict[str, Any] | None:
    path = card_path(name, weights_dir)
    return json.loads(path.read_text()) if path.is_file() else None


def checkpoint_classes(ckpt: dict[str, Any], card: dict[str, Any] | None) -> tuple[str, ...]:
    """The class names a trained classifier outputs, in output order.

    The checkpoint's `classes` win (they travel with the weights), then the card's, then cxr3's
    `settings.CLASSES`: the committed weights predate the field and are cxr3 models, so they keep
    exactly the classes (and order) they were trained with."""
    for source in (ckpt.get("classes"), (card or {}).get("classes")):
        if source:
            return tuple(str(c) for c in source)
    return settings.CLASSES


@dataclass
class Classifier:
    """A trained classifier ready for inference (eval mode, calibrated temperature)."""

    name: str
    spec: ModelSpec
    model: nn.Module
    input_size: int
    temperature: float
    card: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = settings.CLASSES  # output order of the model (checkpoint_classes)

    @property
    def display_name(self) -> str:
        return self.spec.display_name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def cam_layer(self) -> nn.Module:
        return self.model.cam_layer  # type: ignore[return-value]

    def to_input(self, image: Any, box: Any = None) -> torch.Tensor:
        """The (1, C, S, S) tensor this model reads for `image` (a CXRImage or pixels), optionally
        cropped to `box`: the one place that knows the model's family and size."""
        from cxr_core.preprocess import image_to_tensor

        return image_to_tensor(image, self.family, self.input_size, box)


def available_classifiers() -> list[str]:
    """Classifier names that have trained weights on disk, in settings order."""
    return [n for n in settings.CLASSIFIERS if weights_path(n).is_file()]


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=None)
def load_classifier(name: str, weights_dir: Path | None = None) -> Classifier:
    """Load trained weights once per process (from `weights_dir`, default settings.WEIGHTS_DIR, e.g. a
    `classify train --out-dir` of a model retrained on other classes). Raises ModelUnavailableError
    if not trained."""
    if name not in SPECS:
        raise KeyError(f"Unknown model '{name}'. Known: {', '.join(SPECS)}")
    path = weights_path(name, weights_dir)
    if not path.is_file():
        raise ModelUnavailableError(
            f"{SPECS[name].display_name} has no trained weights ({path.name} is missing). "
            f"Train it with: python -m cxr_core.train --model {name}"
        )
    ckpt = load_checkpoint(path)
    card = read_card(name, weights_dir) or {}
    classes = checkpoint_classes(ckpt, card)
    model, _ = build_model(name, input_size=int(ckpt["input_size"]), imagenet=False, num_classes=len(classes))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state)
    freeze(model)
    # channels_last: at batch 1, 2 threads on an AVX2 EPYC (2026-12-04; logits differ by < 1e-5) it took
    # 0.62 / 0.86 / 0.86 / 0.80 of the default layout's time (V-BreathNet / DenseNet121 / MobileNetV2 /
    # VGG16), timed interleaved by `python -m cxr_core.bench` (forward_X vs forward_X_contiguous).
    model = model.to(memory_format=torch.channels_last)
    return Classifier(
        name=name,
        spec=SPECS[name],
        model=model,
        input_size=int(ckpt["input_size"]),
        temperature=float(ckpt.get("temperature", 1.0)),
        card=card,
        classes=classes,
    )


__all__ = [
    "SPECS",
    "Classifier",
    "ModelSpec",
    "ModelUnavailableError",
    "TransferNet",
    "VBreathNet",
    "available_classifiers",
    "build_model",
    "card_path",
    "checkpoint_classes",
    "count_params",
    "freeze",
    "load_classifier",
    "read_card",
    "weights_path",
]
