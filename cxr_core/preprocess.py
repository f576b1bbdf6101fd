"""CXRImage -> model input, identical for training, evaluation, the app and the benchmark.

Two steps, both deterministic:
1. `standardise(pixels, size)`: optional chest crop, square resize and a robust intensity
   stretch (1st-99th percentile) to uint8. Training caches exactly this output, inference
   computes it on the fly, so the two cannot drift apart.
2. `to_model_tensor(batch, family)`: uint8 -> float, 3 channels, per-family normalisation.

The robust stretch removes much of the exposure and scanner-contrast differences between
hospitals, which in cxr3 correlate with the label (see the dataset README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from cxr_core import settings
from cxr_core.io import CXRImage

Region = tuple[int, int, int, int]  # crop x0, y0, x1, y1 in pixels, exclusive end (a finding is `boxes.Box`)


@dataclass(frozen=True)
class InputSpec:
    """How one model family wants its input."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES: dict[str, InputSpec] = {
    # V-BreathNet was trained on rescaled [0, 1] input in the paper; we centre it as well.
    "vbreathnet": InputSpec(settings.VBREATHNET_SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "imagenet": InputSpec(settings.BASELINE_SIZE, settings.IMAGENET_MEAN, settings.IMAGENET_STD),
}


def spec_for(family: str, size: int | None = None) -> InputSpec:
    base = FAMILIES[family]
    return base if size is None else InputSpec(size, base.mean, base.std)


def robust_stretch(pixels: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Percentile contrast stretch to [0, 1]; flat images stay flat instead of amplifying noise."""
    lo, hi = np.percentile(pixels, [low_pct, high_pct])
    if hi - lo < 1e-3:
        return np.clip(pixels, 0.0, 1.0).astype(np.float32)
    return np.clip((pixels - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def crop(pixels: np.ndarray, box: Region | None) -> np.ndarray:
    if box is None:
        return pixels
    x0, y0, x1, y1 = box
    h, w = pixels.shape
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(w, int(x1)), min(h, int(y1))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return pixels
    return pixels[y0:y1, x0:x1]


def standardise(pixels: np.ndarray, size: int, box: Region | None = None) -> np.ndarray:
    """Crop, resize to size x size and stretch intensities; returns uint8 (size, size)."""
    region = crop(np.asarray(pixels, dtype=np.float32), box)
    h, w = region.shape
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    resized = cv2.resize(region, (size, size), interpolation=interp)
    return np.rint(robust_stretch(resized) * 255.0).astype(np.uint8)


def to_model_tensor(batch: np.ndarray | torch.Tensor, family: str) -> torch.Tensor:
    """uint8 (N, S, S) or float (N, 1, S, S) in [0, 1] -> normalised float (N, 3, S, S)."""
    x = torch.as_tensor(batch)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    spec = FAMILIES[family]
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def image_to_tensor(
    image: CXRImage | np.ndarray, family: str, size: int | None = None, box: Region | None = None
) -> torch.Tensor:
    """One image -> (1, 3, S, S) model input; the path the app, predict and bench use."""
    pixels = image.pixels if isinstance(image, CXRImage) else image
    spec = spec_for(family, size)
    return to_model_tensor(standardise(pixels, spec.size, box)[None], family)


AUGMENTATIONS = ("standard", "acquisition")  # cfg/classify.yaml `augment`
AUGMENTATION_TEXT = {  # train_augmentation below, in words, for the model card: change both together
    "standard": "rotation +-10 deg, shift 6 %, zoom 0.9-1.1, brightness/contrast 0.2, light blur; no flips",
    "acquisition": "rotation +-10 deg, shift 6 %, zoom 0.9-1.1, brightness/contrast 0.2; gamma 0.65-1.5 (p 0.3), "
                   "blur sigma 0.3-2.2 (p 0.25), low resolution 1/3-3/4 (p 0.15), JPEG q 25-75 (p 0.15), "
                   "Gaussian noise sd 0.005-0.035 (p 0.3); no flips",
}


def train_augmentation(size: int, kind: str = "standard") -> Callable[[torch.Tensor], torch.Tensor]:
    """Augmentations for (1, S, S) float tensors in [0, 1].

    "standard" (the shipped 40-epoch run): small rotations, shifts and zoom imitate patient
    positioning; brightness/contrast imitate exposure. No horizontal flips: a flipped CXR puts the
    heart on the right (dextrocardia) and mirrors laterality markers, which is not a plausible radiograph.

    "acquisition" adds what differs between hospitals' films and what the shift probe
    (`cxr_core.classify.probes`) measured the standard model to be fragile to: gamma, sensor noise,
    stronger blur, JPEG compression and a low-resolution round trip. The probe's own settings (gamma
    0.7 / 1.4, noise 0.03, blur sigma 2, JPEG 30, 128 px) lie inside these ranges, so a model trained
    with them is tested on perturbations it has seen: its card says so.
    """
    from torchvision.transforms import v2

    standard = [
        v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ]
    if kind == "standard":
        return v2.Compose(standard + [v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.0))], p=0.2)])
    if kind != "acquisition":
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {kind!r}")
    return v2.Compose(standard + [
        v2.RandomApply([RandomGamma((0.65, 1.5))], p=0.3),
        v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.3, 2.2))], p=0.25),
        v2.RandomApply([LowResolution((size // 3, size * 3 // 4))], p=0.15),
        v2.RandomApply([RandomJPEG((25, 75))], p=0.15),
        v2.RandomApply([GaussianNoise((0.005, 0.035))], p=0.3),
    ])


class RandomGamma(torch.nn.Module):
    """x ** g with log g uniform in log(range): exposure curves differ between detectors."""

    def __init__(self, gamma: tuple[float, float]) -> None:
        super().__init__()
        self.log_range = (float(np.log(gamma[0])), float(np.log(gamma[1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = float(torch.empty(()).uniform_(*self.log_range).exp())
        return x.clamp(0.0, 1.0).pow(g)


class GaussianNoise(torch.nn.Module):
    """Additive sensor noise with a standard deviation drawn from `sigma` (intensities in [0, 1])."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = float(torch.empty(()).uniform_(*self.sigma))
        return (x + torch.randn_like(x) * s).clamp(0.0, 1.0)


class LowResolution(torch.nn.Module):
    """Down to a side drawn from `sides` (area) and back up (bilinear): a film stored or sent small."""

    def __init__(self, sides: tuple[int, int]) -> None:
        super().__init__()
        self.sides = sides

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = int(torch.randint(self.sides[0], self.sides[1] + 1, ()))
        small = torch.nn.functional.interpolate(x[None], size=(side, side), mode="area")
        return torch.nn.functional.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]


class RandomJPEG(torch.nn.Module):
    """JPEG round trip at a quality drawn from `quality` (torchvision's libjpeg codec)."""

    def __init__(self, quality: tuple[int, int]) -> None:
        super().__init__()
        self.quality = quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.io import decode_jpeg, encode_jpeg

        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()))
        u8 = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return decode_jpeg(encode_jpeg(u8, quality=q)).float().div_(255.0)


def stack_standardised(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack([standardise(p, size) for p in images]) if images else np.zeros((0, size, size), np.uint8)
