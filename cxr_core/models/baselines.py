"""Transfer-learning baselines from the paper: DenseNet121, MobileNetV2 and VGG16 with a small head.

The paper froze ImageNet backbones and trained a small head. Offline we only have ImageNet
weights for MobileNetV2 (../shared/weights). DenseNet121 and VGG16 are used with official
torchvision weights if a user already has them in the torch cache; otherwise they are trained
from scratch (whole network, reduced input size, VGG16 at half width to stay under the 25 MB
weight budget) and every place that shows their numbers says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from cxr_core import settings

# Official torchvision checkpoints, used only if already present in the torch cache (never downloaded).
TORCHVISION_FILES: dict[str, str] = {
    "densenet121": "densenet121-a639ec97.pth",
    "vgg16": "vgg16_bn-6c64b313.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
}
FEATURE_DIMS: dict[str, int] = {"densenet121": 1024, "mobilenet_v2": 1280, "vgg16": 512}


class TransferNet(nn.Module):
    """Backbone `features` + global average pooling + a small MLP head."""

    def __init__(self, features: nn.Module, feat_dim: int, relu_after_features: bool, hidden: int = 256,
                 num_classes: int = len(settings.CLASSES)) -> None:
        super().__init__()
        self.features = features
        self.post = nn.ReLU(inplace=False) if relu_after_features else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(feat_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(hidden, num_classes),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features; cached once when the backbone is frozen."""
        return self.pool(self.post(self.features(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @property
    def cam_layer(self) -> nn.Module:
        """Last block of the backbone: the deepest map that is still spatial (7x7 at 224 px)."""
        return self.features[-1]


def _vgg16_half_width() -> nn.Module:
    cfg: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    half = [c if c == "M" else int(c) // 2 for c in cfg]
    return torchvision.models.vgg.make_layers(half, batch_norm=True)


def torchvision_cache_file(name: str) -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name]
    return path if path.is_file() else None


def build_baseline(name: str, imagenet: bool, num_classes: int = len(settings.CLASSES)) -> tuple[TransferNet, str]:
    """Returns (network, pretrained_source). pretrained_source is '' when trained from scratch;
    `num_classes` sizes the head (a model retrained on a hospital's own classes)."""
    source = ""
    if name == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(weights=None)
        if imagenet and settings.MOBILENET_V2_IMAGENET.is_file():
            state = torch.load(settings.MOBILENET_V2_IMAGENET, map_location="cpu", weights_only=True)
            net.features.load_state_dict(state, strict=True)
            source = f"ImageNet ({settings.MOBILENET_V2_IMAGENET.name}, see ../shared/weights/README.md)"
        return TransferNet(net.features, FEATURE_DIMS[name], relu_after_features=False, num_classes=num_classes), source
    if name == "densenet121":
        net = torchvision.models.densenet121(weights=None)
        cached = torchvision_cache_file(name) if imagenet else None
        if cached is not None:
            net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            source = f"ImageNet (torchvision {cached.name} from the local torch cache)"
        return TransferNet(net.features, FEATURE_DIMS[name], relu_after_features=True, num_classes=num_classes), source
    if name == "vgg16":
        cached = torchvision_cache_file(name) if imagenet else None
        if cached is not None:
            net = torchvision.models.vgg16_bn(weights=None)
            net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            return (TransferNet(net.features, 512, relu_after_features=False, num_classes=num_classes),
                    f"ImageNet (torchvision {cached.name})")
        return TransferNet(_vgg16_half_width(), 256, relu_after_features=False, num_classes=num_classes), source
    raise KeyError(name)
