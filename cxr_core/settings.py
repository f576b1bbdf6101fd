"""The one place for constants: class names, sizes, thresholds and paths.

Everything that more than one module (or the app and a CLI) must agree on lives here,
so training, evaluation, the app and the benchmark can never drift apart.
Paths can be overridden with environment variables so CI and users can point
at their own data without editing code.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- paths -------------------------------------------------------------------
ROOT: Path = Path(__file__).resolve().parent.parent
WEIGHTS_DIR: Path = Path(os.environ.get("CXR_WEIGHTS_DIR", ROOT / "weights"))
SHARED_DIR: Path = Path(os.environ.get("CXR_SHARED_DIR", ROOT.parent / "shared"))
DATA_DIR: Path = SHARED_DIR / "data"
CXR3_DIR: Path = DATA_DIR / "cxr3"
CXR3_MANIFEST: Path = CXR3_DIR / "manifest.csv"
VINBIG_DIR: Path = DATA_DIR / "vinbigdata"
TBX11K_DIR: Path = DATA_DIR / "cxr_boxes" / "tbx11k"
LUNGSEG_DIR: Path = DATA_DIR / "lungseg"
PRETRAINED_DIR: Path = SHARED_DIR / "weights"
MOBILENET_V2_IMAGENET: Path = PRETRAINED_DIR / "mobilenet_v2_imagenet_features.pth"
YOLO_PRETRAINED: Path = PRETRAINED_DIR / "yolov5nu_vinbig14_coco_backbone.pt"
# Derived data (decoded caches, run folders). Never committed.
CACHE_DIR: Path = Path(os.environ.get("CXR_CACHE_DIR", ROOT / "cache"))

# --- classes -----------------------------------------------------------------
CLASSES: tuple[str, ...] = ("covid", "normal", "viral_pneumonia")
CLASS_LABELS: dict[str, str] = {
    "covid": "COVID-19",
    "normal": "Normal",
    "viral_pneumonia": "Viral Pneumonia",
}
CLASSIFIERS: tuple[str, ...] = ("vbreathnet", "densenet121", "mobilenet_v2", "vgg16")
DEFAULT_CLASSIFIER: str = "vbreathnet"

# --- image input ---------------------------------------------------------------
MIN_IMAGE_SIDE: int = 64  # below this a radiograph cannot be read
MAX_IMAGE_SIDE: int = 12_000  # refuse absurd sizes before decoding
MAX_IMAGE_PIXELS: int = 100_000_000  # decompression-bomb guard (PIL's default is ~89 M)
MAX_FILE_BYTES: int = 200 * 1024 * 1024
WORKING_SIDE: int = 1024  # large images are downscaled (long side) right after decoding
UPLOAD_TYPES: tuple[str, ...] = ("png", "jpg", "jpeg", "dcm", "dicom", "bmp", "tif", "tiff")

# --- model inputs --------------------------------------------------------------
VBREATHNET_SIZE: int = 256  # the paper's input; the architecture's parameter count depends on it
BASELINE_SIZE: int = 224  # ImageNet convention for the transfer-learning baselines
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SEED: int = 20240501

# --- decision thresholds -------------------------------------------------------
# Abstain when the calibrated top probability is below this (chosen on the val split,
# see cxr_core.classify and the model card) or when quality fails.
ABSTAIN_CONFIDENCE: float = 0.70

# --- runtime -------------------------------------------------------------------
TORCH_THREADS: int = int(os.environ.get("CXR_TORCH_THREADS", "2"))

DISCLAIMER: str = (
    "Decision support, not a diagnosis. Research prototype trained on public data; "
    "results must be interpreted by a qualified clinician together with the full clinical picture."
)
