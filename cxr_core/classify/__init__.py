"""Three-class classification (COVID-19 / Normal / Viral pneumonia): V-BreathNet and the baselines.

One file per job, the shape of every task package (`segment/`, `detect/`):
`model` (the registry `cxr_core.models.SPECS` and `load_classifier`), `predict` (one image ->
calibrated `Prediction` with the abstention rule), `predict_files` (files and folders -> CSV rows,
the ``classify predict`` mode), `train` (resumable, budgeted training), `val` (metrics per source and
age group, the probes), `probes` (context-only and acquisition-shift images), `explain`
(Grad-CAM family heatmaps) and `sanity` (randomisation and deletion checks of those heatmaps).

``python -m cxr_core classify train|val|predict|explain|sanity|export``; the older module commands
(``python -m cxr_core.train|evaluate|predict|explain``) are aliases of these modules.

`cxr_core.classify.predict` is the function, as it was before the package existed (the app, the
CLIs, batch and PACS call `classify.predict(image, classifier)`); import the module's other names
with ``from cxr_core.classify.predict import ...``.
"""

from cxr_core.classify.model import Classifier, ModelUnavailableError, load_classifier
from cxr_core.classify.predict import Prediction, abstain_threshold, calibrated_probs, decide, scope_reason
from cxr_core.classify.predict import predict  # noqa: I001  (last: the function shadows the submodule name)

__all__ = [
    "Classifier",
    "ModelUnavailableError",
    "Prediction",
    "abstain_threshold",
    "calibrated_probs",
    "decide",
    "load_classifier",
    "predict",
    "scope_reason",
]
