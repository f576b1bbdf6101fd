"""The classifier side of the model registry: what `classify` loads and how.

The networks and the registry live in `cxr_core.models` (`SPECS`: builder, input family and size,
CAM layer, optimiser, paper figures; one entry per model, at the end of each network file's
registration), because detection and the export tools read the same registry. This module names
what a classification caller needs, so the task package has the same `model` entry as `segment/`.
"""

from cxr_core.models import (
    SPECS,
    Classifier,
    ModelSpec,
    ModelUnavailableError,
    available_classifiers,
    build_model,
    card_path,
    checkpoint_classes,
    count_params,
    freeze,
    load_checkpoint,
    load_classifier,
    read_card,
    weights_path,
)

__all__ = [
    "SPECS",
    "Classifier",
    "ModelSpec",
    "ModelUnavailableError",
    "available_classifiers",
    "build_model",
    "card_path",
    "checkpoint_classes",
    "count_params",
    "freeze",
    "load_checkpoint",
    "load_classifier",
    "read_card",
    "weights_path",
]
