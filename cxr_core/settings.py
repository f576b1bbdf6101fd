"""The one place for constants: class names, sizes, thresholds and paths.

Everything that more than one module (or the app and a CLI) must agree on lives here,
so training, evaluation, the app and the benchmark can never drift apart.
Paths can be overridden with environment variables so CI and users can point
at their own data without editing code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

# --- paths -------------------------------------------------------------------
ROOT: Path = Path(__file__).resolve().parent.parent
WEIGHTS_DIR: Path = Path(os.environ.get("CXR_WEIGHTS_DIR", ROOT / "weights"))
WEIGHT_BUDGET_MB: int = 25  # a committed weights file stays under this (git, the 64 MiB device carry)
# `python -m cxr_core.evaluate --probes --out docs/probes/NAME.json`: read by the comparison page.
PROBES_DIR: Path = Path(os.environ.get("CXR_PROBES_DIR", ROOT / "docs" / "probes"))
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


def class_label(name: str) -> str:
    """The display name of a class: the cxr3 wording where there is one, else the folder name made
    readable ("tuberculosis" -> "Tuberculosis", "bacterial_pneumonia" -> "Bacterial pneumonia").

    Why a helper and not `CLASS_LABELS[name]`: a classifier retrained on a hospital's own folder of
    classes (`classify train --data FOLDER`) brings class names this table has never seen, and every
    page, report and dashboard must still be able to name them.
    """
    known = CLASS_LABELS.get(name)
    if known:
        return known
    text = " ".join(name.replace("_", " ").replace("-", " ").split())
    return text[:1].upper() + text[1:] if text else name


def ordered_classes(names: Iterable[str]) -> list[str]:
    """`names` without repeats, cxr3's classes first in their fixed order, then any others as given:
    displays of stored results (a report record, several model cards) stay in the order they always
    had for the shipped models, and still show every class of a retrained one."""
    seen = list(dict.fromkeys(names))
    return [c for c in CLASSES if c in seen] + [c for c in seen if c not in CLASSES]


def prob_columns(classes: Iterable[str] = CLASSES) -> tuple[str, ...]:
    """`p_<class>` for each class, in order: the probability columns of pipeline rows, predict CSVs and
    batch tables (`p_covid, p_normal, p_viral_pneumonia` unless the classifier was retrained on others)."""
    return tuple(f"p_{c}" for c in classes)


def is_cxr3(classes: Iterable[str]) -> bool:
    """Whether a classifier's classes are cxr3's (or some of them), so the cxr3-specific clinical
    rules below (the age-group table, the Normal scope note, the no-tuberculosis-class warning) are
    about it. A model retrained on a hospital's own classes gets none of them: nothing here says
    whom its classes were learned from or which diseases it covers."""
    return set(classes) <= set(CLASSES)


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

# What a DICOM header may say that puts an image outside the models' scope (frontal chest radiographs).
# Deny-lists, not allow-lists: headers vary by vendor, and the pixel checks judge everything else.
NON_RADIOGRAPH_MODALITIES: frozenset[str] = frozenset(
    {"CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "PX", "IO", "OP", "OCT", "ES", "XC", "SM"})
NON_FRONTAL_VIEWS: frozenset[str] = frozenset({"LL", "RL", "LAT", "LATERAL", "RLO", "LLO"})  # lateral, oblique
CHEST_BODY_PARTS: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAKS")

# Who the classifiers learned each class from (cxr3 train split; its README): COVID-19 only in adults,
# viral pneumonia only in children aged 1-5, normals in both. A call outside this table is an
# extrapolation the data cannot support, so the model abstains (cxr_core.classify.decide).
# tests/classify/test_classify.py checks the table against the manifest.
AGE_GROUPS: tuple[str, ...] = ("adult", "paediatric", "other")
AGE_GROUP_LABELS: dict[str, str] = {
    "adult": "Adult (18 years or older)",
    "paediatric": "Child aged 1-5 years",
    "other": "Another age (under 1, or 6-17 years)",
}
ADULT_AGE_YEARS: int = 18
PAEDIATRIC_AGE_YEARS: tuple[int, int] = (1, 5)  # Kermany's children, the only ones in cxr3
TRAINED_AGE_GROUPS: dict[str, tuple[str, ...]] = {
    "covid": ("adult",),
    "normal": ("adult", "paediatric"),
    "viral_pneumonia": ("paediatric",),
}

# --- runtime -------------------------------------------------------------------
TORCH_THREADS: int = int(os.environ.get("CXR_TORCH_THREADS", "2"))

DISCLAIMER: str = (
    "Decision support, not a diagnosis. Research prototype trained on public data; "
    "results must be interpreted by a qualified clinician together with the full clinical picture."
)
# Scope notes shown beside a result (page, report): what a suggestion does and does not cover.
NORMAL_SCOPE_NOTE: str = (
    "\"Normal\" means no COVID-19 or viral-pneumonia pattern: this classifier knows only those three "
    "classes and does not look for tuberculosis, nodules, effusion or other disease."
)
AGE_SCOPE_NOTE: str = (
    "Age group not given, so the age check was not applied: the training data has COVID-19 only in "
    "adults and viral pneumonia only in children aged 1-5. Set the age group in the sidebar."
)

# --- detection ---
VINBIG_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)  # class_id 0-13 in VinBigData order; class_id 14 ("No finding") has no boxes
TB_CLASSES: tuple[str, ...] = ("Active tuberculosis", "Obsolete tuberculosis")  # TBX11K, ids 14-15
DETECTOR_CLASSES: tuple[str, ...] = VINBIG_CLASSES + TB_CLASSES
DETECTOR_WEIGHTS: Path = WEIGHTS_DIR / "detector.pt"
DETECTOR_CARD: Path = WEIGHTS_DIR / "detector.json"
DETECTOR_METRICS: Path = WEIGHTS_DIR / "detector_metrics.json"  # test-split metrics from `detection evaluate`
DETECTOR_DATA_DIR: Path = CACHE_DIR / "detection" / "yolo"  # prepared YOLO dataset (never committed)
DETECTOR_IMGSZ: int = 512  # only for checkpoints that do not record their training size (cfg/detect.yaml sets it)
DETECTOR_CONF: float = 0.25  # default display threshold for detect()
DETECTOR_MIN_CONF: float = 0.05  # lowest threshold the viewer offers; boxes are detected once at it and filtered
# Targets of the TB box operating point (`python -m cxr_core detect operating-point`, docs/detector.md).
# The app's default box threshold is the lowest confidence meeting both on the validation films:
# * at most 0.05 false TB boxes per film labelled Normal (worst of adults and children): a reader who
#   looks at 20 healthy chests should see at most one spurious TB box, so a box on a chest is worth a look;
# * at least half of the TB boxes drawn on TB films mark a radiologist's TB lesion (IoU >= 0.5), so a
#   box is more often right than wrong where TB is present.
# If no threshold meets both, the false-positive target wins (see detect.operating.choose_operating_point).
DETECTOR_TARGET_FP_PER_NORMAL_FILM: float = 0.05
DETECTOR_TARGET_PRECISION: float = 0.5
DETECTOR_WBF_IOU: float = 0.6  # IoU for fusing radiologists' boxes (weighted boxes fusion)
DETECTOR_MIN_SUPPORT: int = 10  # test boxes a class needs before its AP counts as validated

# --- lung segmentation ---
LUNGSEG_SIZE: int = 256  # letterboxed input side, same geometry as the lungseg training data
LUNGSEG_WEIGHTS: Path = WEIGHTS_DIR / "lungseg.pt"
LUNGSEG_ENCODER: str = "mobilenet_v2"
LUNGSEG_DECODER_CHANNELS: tuple[int, ...] = (128, 64, 32, 16, 16)
# Two output heads, one per mask convention of the training data (see docs/lungs.md):
# "field" = visible lung field, heart excluded (GeneralBlockchain); "full" = lung outline
# including the retrocardiac region (V7 Darwin). `segment` uses LUNGSEG_HEAD by default.
LUNGSEG_HEADS: tuple[str, ...] = ("field", "full")
LUNGSEG_HEAD: str = "full"
LUNGSEG_THRESHOLD: float = 0.5
LUNG_BOX_MARGIN: float = 0.05  # chest box margin, fraction of the box side
LUNG_MIN_COMPONENT_FRACTION: float = 0.005  # specks below this fraction of the image are dropped
LUNG_MIN_FIELD_FRACTION: float = 0.02  # one lung field must cover at least this much of the image
LUNG_TOTAL_FRACTION_RANGE: tuple[float, float] = (0.06, 0.75)  # plausible lung / image area

# --- image quality gate --------------------------------------------------------
# Calibrated on the cxr3 train split by `python -m cxr_core.quality calibrate` (docs/quality.md);
# cxr_core.quality falls back to built-in conservative values when the file is missing.
QUALITY_THRESHOLDS: Path = WEIGHTS_DIR / "quality_thresholds.json"
