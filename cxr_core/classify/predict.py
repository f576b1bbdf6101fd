"""Single-image classification with calibrated probabilities and an abstention rule.

The app, `python -m cxr_core.predict` and the benchmark all call `predict`, so the
abstention rule is applied identically everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from cxr_core import settings
from cxr_core.io import CXRImage
from cxr_core.models import Classifier, load_classifier
from cxr_core.preprocess import Region

if TYPE_CHECKING:
    from cxr_core.gate.quality import QualityReport


@dataclass(frozen=True)
class Prediction:
    model: str
    probabilities: dict[str, float]  # calibrated, keyed by class name in the classifier's class order
    predicted: str
    confidence: float
    abstained: bool
    reasons: list[str] = field(default_factory=list)
    temperature: float = 1.0
    age_group: str | None = None  # as given by the user or read from DICOM; None = not given

    @property
    def label(self) -> str:
        return settings.class_label(self.predicted)

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "probabilities": self.probabilities,
            "predicted": self.predicted,
            "predicted_label": self.label,
            "confidence": self.confidence,
            "abstained": self.abstained,
            "reasons": list(self.reasons),
            "temperature": self.temperature,
            "age_group": self.age_group,
        }


def abstain_threshold(clf: Classifier) -> float:
    """Per-model threshold chosen on the validation split (model card), else the settings default."""
    cal = clf.card.get("calibration", {}) if clf.card else {}
    return float(cal.get("abstain_threshold", settings.ABSTAIN_CONFIDENCE))


def calibrated_probs(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return torch.softmax(logits.float() / temperature, dim=-1).cpu().numpy()


def scope_reason(predicted: str, age_group: str | None) -> str | None:
    """Why a call falls outside the population the model learned that class from, if it does.

    The table (`settings.TRAINED_AGE_GROUPS`) describes cxr3's classes only: a class it does not know
    (a model retrained on a hospital's own folder) gets no age rule, since nothing here says whom
    that class was learned from."""
    if age_group is None:
        return None
    if age_group not in settings.AGE_GROUPS:
        raise ValueError(f"Unknown age group '{age_group}'. Known: {', '.join(settings.AGE_GROUPS)}")
    if predicted not in settings.TRAINED_AGE_GROUPS:
        return None
    if age_group == "other":
        return ("The training data has no patients of this age (only adults and children aged 1-5), "
                "so no class can be suggested.")
    if age_group not in settings.TRAINED_AGE_GROUPS[predicted]:
        who = "adults" if age_group == "adult" else "children"
        label = settings.class_label(predicted)
        return (f"The training data has no {label} in {who}, so a {label} call for this patient is outside "
                "what the model learned.")
    return None


def decide(
    probs: np.ndarray, threshold: float, quality: QualityReport | None = None, age_group: str | None = None,
    classes: Sequence[str] = settings.CLASSES,
) -> tuple[int, bool, list[str]]:
    """(predicted index, abstained, reasons). Abstain on low confidence, failed quality, or a call
    for a patient group the model never saw with that class. `classes` names the entries of
    `probs` (the classifier's `classes`; cxr3's by default)."""
    idx = int(np.argmax(probs))
    reasons: list[str] = []  # the most basic problem first: a worklist shows only the first
    if quality is not None and not quality.ok:
        reasons.append("Image quality check failed: " + "; ".join(quality.reasons))
    scope = scope_reason(classes[idx], age_group) if settings.is_cxr3(classes) else None
    if scope:
        reasons.append(scope)
    if float(probs[idx]) < threshold:
        reasons.append(
            f"Confidence {probs[idx]:.0%} is below the {threshold:.0%} needed to suggest a class."
        )
    return idx, bool(reasons), reasons


@torch.inference_mode()
def predict(
    image: CXRImage,
    clf: Classifier | str = settings.DEFAULT_CLASSIFIER,
    quality: QualityReport | None = None,
    box: Region | None = None,
    age_group: str | None = None,
) -> Prediction:
    """`age_group` defaults to what the DICOM header says (`ImageMeta.age_group`), if anything."""
    classifier = load_classifier(clf) if isinstance(clf, str) else clf
    age_group = age_group or image.meta.age_group
    x = classifier.to_input(image, box)
    probs = calibrated_probs(classifier.model(x)[0], classifier.temperature)
    classes = classifier.classes
    idx, abstained, reasons = decide(probs, abstain_threshold(classifier), quality, age_group, classes)
    return Prediction(
        model=classifier.name,
        probabilities={c: float(p) for c, p in zip(classes, probs)},
        predicted=classes[idx],
        confidence=float(probs[idx]),
        abstained=abstained,
        reasons=reasons,
        temperature=classifier.temperature,
        age_group=age_group,
    )
