"""Single-image classification with calibrated probabilities and an abstention rule.

The app, `python -m cxr_core.predict` and the benchmark all call `predict`, so the
abstention rule is applied identically everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from cxr_core import settings
from cxr_core.io import CXRImage
from cxr_core.models import Classifier, load_classifier
from cxr_core.preprocess import Box, image_to_tensor

if TYPE_CHECKING:
    from cxr_core.quality import QualityReport


@dataclass(frozen=True)
class Prediction:
    model: str
    probabilities: dict[str, float]  # calibrated, keyed by class name in settings.CLASSES order
    predicted: str
    confidence: float
    abstained: bool
    reasons: list[str] = field(default_factory=list)
    temperature: float = 1.0

    @property
    def label(self) -> str:
        return settings.CLASS_LABELS[self.predicted]

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
        }


def abstain_threshold(clf: Classifier) -> float:
    """Per-model threshold chosen on the validation split (model card), else the settings default."""
    cal = clf.card.get("calibration", {}) if clf.card else {}
    return float(cal.get("abstain_threshold", settings.ABSTAIN_CONFIDENCE))


def calibrated_probs(logits: torch.Tensor, temperature: float) -> np.ndarray:
    return torch.softmax(logits.float() / temperature, dim=-1).cpu().numpy()


def decide(
    probs: np.ndarray, threshold: float, quality: QualityReport | None = None
) -> tuple[int, bool, list[str]]:
    """(predicted index, abstained, reasons). Abstain on low confidence or failed quality."""
    idx = int(np.argmax(probs))
    reasons: list[str] = []
    if float(probs[idx]) < threshold:
        reasons.append(
            f"Confidence {probs[idx]:.0%} is below the {threshold:.0%} needed to suggest a class."
        )
    if quality is not None and not quality.ok:
        reasons.append("Image quality check failed: " + "; ".join(quality.reasons))
    return idx, bool(reasons), reasons


@torch.inference_mode()
def predict(
    image: CXRImage,
    clf: Classifier | str = settings.DEFAULT_CLASSIFIER,
    quality: QualityReport | None = None,
    box: Box | None = None,
) -> Prediction:
    classifier = load_classifier(clf) if isinstance(clf, str) else clf
    x = image_to_tensor(image, classifier.family, classifier.input_size, box)
    probs = calibrated_probs(classifier.model(x)[0], classifier.temperature)
    idx, abstained, reasons = decide(probs, abstain_threshold(classifier), quality)
    return Prediction(
        model=classifier.name,
        probabilities={c: float(p) for c, p in zip(settings.CLASSES, probs)},
        predicted=settings.CLASSES[idx],
        confidence=float(probs[idx]),
        abstained=abstained,
        reasons=reasons,
        temperature=classifier.temperature,
    )
