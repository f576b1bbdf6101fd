"""Alias of `cxr_core.segment` (the lung U-Net), kept because `from cxr_core import lungs` and
`python -m cxr_core.lungs train|evaluate|card|predict|crop-boxes` are in people's scripts.

New code imports `cxr_core.segment` (or its modules); the names below are the same objects.
"""

from __future__ import annotations

import sys

from cxr_core.segment import *  # noqa: F403
from cxr_core.segment import __all__  # noqa: F401
from cxr_core.segment.__main__ import main as _cli
from cxr_core.segment.card import _schedule_note, write_card  # noqa: F401
from cxr_core.segment.crop import crop_boxes  # noqa: F401
from cxr_core.segment.data import _augment, _random_crop, _source_key, load_split  # noqa: F401
from cxr_core.segment.model import _load_segmenter, _normalise, load_imagenet_encoder  # noqa: F401
from cxr_core.segment.predict import _components, _Component  # noqa: F401
from cxr_core.segment.train import _loss, _lr_at, _masked_logits, export_weights, train  # noqa: F401
from cxr_core.segment.val import _predict_all, dice_iou, evaluate, measure_latency, score  # noqa: F401

if __name__ == "__main__":
    sys.exit(_cli())
