"""The lung U-Net (segmentation-models-pytorch, MobileNetV2 encoder), its input geometry (letterbox to
settings.LUNGSEG_SIZE) and loading trained weights once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from cxr_core import settings
from cxr_core.preprocess import robust_stretch


# --- geometry & input -------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """How an (h, w) image was placed in the size x size square."""

    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int
    orig_w: int
    orig_h: int


def letterbox(pixels: np.ndarray, size: int = settings.LUNGSEG_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to `size` (INTER_AREA when shrinking) and zero-pad, centred.

    Same recipe as the lungseg data set, so the network sees the geometry it was trained on.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    h, w = arr.shape
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(arr, (new_w, new_h), interpolation=interp) if (new_w, new_h) != (w, h) else arr
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, Letterbox(scale, pad_x, pad_y, new_w, new_h, w, h)


def unletterbox(prob: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Inverse of `letterbox` for a size x size map: crop the padding, resize to (orig_h, orig_w)."""
    region = prob[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    if region.shape != (lb.orig_h, lb.orig_w):
        region = cv2.resize(region, (lb.orig_w, lb.orig_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(region, dtype=np.float32)


def to_input(batch: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Letterboxed float images (N, S, S) in [0, 1] -> robust-stretched, ImageNet-normalised (N, 3, S, S)."""
    stretched = np.stack([robust_stretch(np.asarray(p, dtype=np.float32)) for p in batch])
    return _normalise(torch.from_numpy(stretched))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """(N, S, S) float in [0, 1] -> (N, 3, S, S) ImageNet-normalised."""
    mean = torch.tensor(settings.IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(settings.IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


# --- model ------------------------------------------------------------------------------------


def build_model(
    encoder: str = settings.LUNGSEG_ENCODER,
    decoder_channels: Sequence[int] = settings.LUNGSEG_DECODER_CHANNELS,
    n_heads: int = len(settings.LUNGSEG_HEADS),
    imagenet: bool = False,
) -> torch.nn.Module:
    """smp.Unet, never downloading: encoder_weights=None, then (optionally) the shared ImageNet weights."""
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=3,
        classes=n_heads,
        decoder_channels=tuple(decoder_channels),
    )
    if imagenet:
        load_imagenet_encoder(model)
    return model


def load_imagenet_encoder(model: torch.nn.Module, path: Path | None = None) -> None:
    """Map the torchvision MobileNetV2 `features` state_dict onto smp's mobilenet_v2 encoder.

    smp's MobileNetV2Encoder subclasses torchvision's MobileNetV2, so its keys are the torchvision
    ones with a `features.` prefix; all 312 tensors match (strict load).
    """
    path = Path(path or settings.MOBILENET_V2_IMAGENET)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights not found at {path}; see /work/shared/weights/README.md "
            "(nothing is downloaded)."
        )
    src = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {f"features.{k}": v for k, v in src.items()}
    model.encoder.load_state_dict(mapped, strict=True)


class Segmenter:
    """A loaded lung U-Net; `predict` maps letterboxed images to per-head probabilities."""

    def __init__(self, model: torch.nn.Module, config: dict):
        self.model = model.eval()
        self.config = config
        self.heads: tuple[str, ...] = tuple(config.get("heads", settings.LUNGSEG_HEADS))
        self.size: int = int(config.get("size", settings.LUNGSEG_SIZE))

    @torch.inference_mode()
    def predict(self, letterboxed: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, S, S) letterboxed float images -> (N, n_heads, S, S) float32 probabilities."""
        x = to_input(letterboxed)
        return torch.sigmoid(self.model(x)).numpy().astype(np.float32)

    def head_index(self, head: str | None) -> int:
        head = head or settings.LUNGSEG_HEAD
        if head not in self.heads:
            raise ValueError(f"unknown head {head!r}; choose one of {self.heads}")
        return self.heads.index(head)


def load_segmenter(path: str | Path | None = None) -> Segmenter:
    """Load the lung segmenter once per process (cached per path)."""
    return _load_segmenter(str(Path(path) if path is not None else settings.LUNGSEG_WEIGHTS))


@functools.lru_cache(maxsize=4)
def _load_segmenter(path: str) -> Segmenter:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"Lung segmentation weights not found at {p}. Train them with "
            "`python -m cxr_core.lungs train` (see docs/lungs.md)."
        )
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    config = dict(ckpt.get("config", {}))
    model = build_model(
        encoder=config.get("encoder", settings.LUNGSEG_ENCODER),
        decoder_channels=config.get("decoder_channels", settings.LUNGSEG_DECODER_CHANNELS),
        n_heads=len(config.get("heads", settings.LUNGSEG_HEADS)),
    )
    state = {k: v.float() for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return Segmenter(model, config)
