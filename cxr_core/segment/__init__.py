"""Lung segmentation: a small U-Net (segmentation-models-pytorch, MobileNetV2 encoder).

What it is for:
- `chest_box` gives the chest/lung crop that classification and detection can use
  (`cxr_core.preprocess.standardise(pixels, size, box)`).
- `lung_plausibility` is a "does this look like a frontal chest X-ray?" signal for the
  quality / not-a-CXR check: no two lung fields of sensible size and position -> implausible.
- `outline` / `outline_rgba` draw the lung contour in the viewer.

Geometry: the image is letterboxed to 256 x 256 exactly like the training data (resize the long
side to 256 with INTER_AREA, zero-pad centred), the probability is cropped back out of the padding
and resized to the ORIGINAL image size. Intensities: `robust_stretch` (as everywhere else), ImageNet
mean/std, grey repeated to 3 channels.

The training data has two mask conventions (see /work/shared/data/lungseg/README.md), so the network
has two output channels ("heads"), each trained only on its own convention:
"field" = visible lung field with the heart excluded (GeneralBlockchain, radiologists),
"full"  = lung outline including the retrocardiac region (V7 Darwin).
`segment` uses `settings.LUNGSEG_HEAD` ("full") unless told otherwise.

One file per job, the shape of every task package: `model` (network, input geometry, loading),
`predict` (masks and the geometry read from them), `data`, `train`, `val`, `card`, `crop`, and
`__main__` (`python -m cxr_core segment train|val|predict|card|crop-boxes`; the older
`python -m cxr_core.lungs ...` is an alias). The registry of what the app uses is this file.
"""

from cxr_core.segment.model import Letterbox, Segmenter, build_model, letterbox, load_segmenter, to_input, unletterbox
from cxr_core.segment.predict import (
    LungMask,
    chest_box,
    clean_mask,
    lung_fields,
    lung_plausibility,
    mask_from_probability,
    outline,
    outline_rgba,
    segment,
    segment_batch,
)

__all__ = [
    "LungMask",
    "Letterbox",
    "Segmenter",
    "build_model",
    "chest_box",
    "clean_mask",
    "letterbox",
    "load_segmenter",
    "lung_fields",
    "lung_plausibility",
    "mask_from_probability",
    "outline",
    "outline_rgba",
    "segment",
    "segment_batch",
    "to_input",
    "unletterbox",
]
