"""One analysis of one chest X-ray, exactly as the app runs it.

    from cxr_core import pipeline
    a = pipeline.analyse("film.dcm", classifier="vbreathnet", age_group="adult")
    a.prediction.label, a.prediction.abstained   # the suggestion, or why there is none
    a.heatmap().map                              # computed on first use, then cached
    a.lungs().mask, a.boxes(conf=0.3), a.notes(), a.record()

Why one place: decode -> quality -> not-a-CXR -> classify -> explain -> lungs -> boxes ->
clinical notes -> report record used to be written out in the Diagnose page, in
`predict.predict_row` and in the benchmark, so "as the app runs it" meant three slightly
different things. The page, the CLIs, the benchmark, batch scoring and PACS all call `analyse`.

`analyse` does the cheap, always-needed part eagerly (decode once, quality gate, one forward
pass with the abstention rule). The costly layers (Grad-CAM, lung U-Net, YOLO boxes) run only
when asked for and are cached on the `Analysis`, so a page rerun or a second report does not
compute them again. An `Analysis` is frozen (its fields never change) and safe to share between
threads: the layer cache is guarded by a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Union

from cxr_core import classify, settings
from cxr_core.gate import quality as quality_gate
from cxr_core.classify import Prediction
from cxr_core.io import CXRImage, ImageLoadError, load_image
from cxr_core.models import Classifier, load_classifier, read_card
from cxr_core.gate.quality import QualityReport

if TYPE_CHECKING:
    from cxr_core.detect import Box
    from cxr_core.classify.explain import Heatmap
    from cxr_core.segment import LungMask, Segmenter

Source = Union[bytes, bytearray, memoryview, str, Path, CXRImage]

__all__ = ["Analysis", "ImageLoadError", "Source", "analyse", "decode", "lung_note", "box_conflict"]


def decode(source: Source, filename: str | None = None, *, include_identifiers: bool = False) -> CXRImage:
    """A `CXRImage` from a path, the file's bytes or an already decoded image.

    Raises `ImageLoadError` (a user-facing message) for anything that is not a usable image.
    Identifiers are read only when asked for, so they are not even in memory otherwise.
    """
    if isinstance(source, CXRImage):
        return source
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    return load_image(source, filename, include_identifiers=include_identifiers)


def lung_note(mask: LungMask) -> str | None:
    """The clinical note an implausible lung outline raises, if it does."""
    if getattr(mask, "plausible", True):
        return None
    return "The lung outline looks implausible; the image may not be a frontal chest X-ray."


def box_conflict(prediction: Prediction | None, boxes: Iterable[Box]) -> str | None:
    """Warn when validated detector findings disagree with the classifier's suggestion.

    The two models answer different questions. A clinician must not read "Normal" as a clean
    chest while the detector marks a lesion it was validated for, nor read a COVID-19 or viral
    pneumonia suggestion as the whole story when the detector marks tuberculosis: the classifier
    has no tuberculosis class, so a TB film is pushed into one of its three classes.
    Both warnings are about cxr3's classes: a model retrained on other classes (its prediction's
    probabilities name them) gets none, and an unknown class name never raises.
    """
    if prediction is None or prediction.abstained:
        return None
    classes = getattr(prediction, "probabilities", None) or settings.CLASSES
    if prediction.predicted not in settings.CLASSES or not settings.is_cxr3(classes):
        return None
    found = sorted({b.label for b in boxes if b.validated})
    if prediction.predicted == "normal":
        if not found:
            return None
        return (f"The detector marks {', '.join(found)} while the classifier suggests Normal. "
                + settings.NORMAL_SCOPE_NOTE + " Review the marked regions.")
    tb = [label for label in found if label in settings.TB_CLASSES]
    if not tb:
        return None
    suggested = settings.class_label(prediction.predicted)
    return (f"The detector marks {', '.join(tb)} while the classifier suggests {suggested}. "
            "The classifier has no tuberculosis class, so a tuberculosis film is read as one of "
            "COVID-19, Normal or Viral Pneumonia; consider tuberculosis and review the marked regions.")


@dataclass(frozen=True)
class Analysis:
    """What the pipeline knows about one image; costly layers are computed on first use.

    `prediction` is None when no classifier was given (the app still shows the image and its
    quality). Layer methods raise the underlying error (`ModelUnavailableError`,
    `FileNotFoundError` for missing weights) so each caller can word it for its own users;
    a failed layer is not cached, so a later call tries again.
    """

    image: CXRImage
    quality: QualityReport | None
    prediction: Prediction | None
    classifier: Classifier | None = field(default=None, repr=False, compare=False)
    include_identifiers: bool = False
    correction: str | None = None  # set by `corrected()`: what was undone before this analysis
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    # --- lazily computed, cached layers --------------------------------------------------------

    def _cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        with self._lock:  # one computation per key even when two threads ask at once
            if key not in self._cache:
                self._cache[key] = compute()
            return self._cache[key]

    def heatmap(self, target: str | None = None, method: str | None = None, *, lungs_only: bool = False) -> Heatmap:
        """Class-activation map for `target` (default: the predicted class) at the image's size.

        `lungs_only` zeroes the map outside the segmented lungs (runs the lung U-Net once).
        """
        from cxr_core.classify import explain

        if self.classifier is None or self.prediction is None:
            raise ValueError("No classifier was used for this analysis, so there is nothing to explain.")
        target = target or self.prediction.predicted
        method = method or explain.DEFAULT_METHOD
        mask = self.lungs() if lungs_only else None
        return self._cached(("heatmap", target, method, lungs_only),
                            lambda: explain.explain(self.classifier, self.image, target=target, method=method,
                                                    lung_mask=mask))

    def lungs(self, segmenter: Segmenter | None = None) -> LungMask:
        """Lung segmentation at the image's size (weights/lungseg.pt, loaded once per process)."""
        from cxr_core import segment as lung_task

        return self._cached(("lungs",), lambda: lung_task.segment(self.image, segmenter=segmenter))

    def lungs_done(self) -> bool:
        """Whether the lung mask has been computed already (reports add its note only then)."""
        return ("lungs",) in self._cache

    def boxes(self, conf: float | None = None, classes: Iterable[str] | None = None) -> list[Box]:
        """Detector findings in original-image pixels, at or above `conf` (default: the card's
        operating threshold), optionally only `classes`.

        The detector runs once at `settings.DETECTOR_MIN_CONF`; other thresholds filter that list,
        so moving the app's slider does not run YOLO again.
        """
        from cxr_core import detect as det_task

        found = self._cached(("boxes",), lambda: det_task.detect(self.image, conf=settings.DETECTOR_MIN_CONF))
        threshold = detector_threshold() if conf is None else float(conf)
        keep = set(classes) if classes is not None else None
        return [b for b in found if b.confidence >= threshold and (keep is None or b.label in keep)]

    # --- clinical notes and records ---------------------------------------------------------------

    def notes(self, boxes: Iterable[Box] | None = None) -> list[str]:
        """Warnings a reader must see beside the result: an implausible lung outline (when the
        lungs were segmented) and detector findings that contradict a Normal call (`boxes`:
        those shown)."""
        out: list[str] = [self.correction] if self.correction else []
        if self.lungs_done():
            note = lung_note(self.lungs())
            if note:
                out.append(note)
        if boxes is not None:
            conflict = box_conflict(self.prediction, boxes)
            if conflict:
                out.append(conflict)
        return out

    def corrected(self) -> Analysis | None:
        """The same film turned upright and made positive again, analysed afresh, when the
        orientation check found it rotated or inverted (None otherwise).

        Mirroring is not undone: it only warns (dextrocardia exists). The correction is carried as
        the first note, so the page and every report say what was changed; boxes and heatmaps of
        the corrected analysis are in the corrected film's coordinates.
        """
        found = (self.quality.orientation if self.quality is not None else None) or {}
        rotation, inverted = int(found.get("rotation") or 0), bool(found.get("inverted"))
        if not rotation and not inverted:
            return None
        from cxr_core.gate import orientation

        k = orientation.ROTATIONS.index(rotation)
        pixels = orientation.undo(self.image.pixels, k, False, inverted)
        meta = self.image.meta
        if k % 2:  # a quarter turn swaps width and height of the file as well (and row/column spacing)
            meta = replace(meta, original_size=(meta.original_size[1], meta.original_size[0]),
                           pixel_spacing=meta.pixel_spacing[::-1] if meta.pixel_spacing else None)
        if inverted and meta.value_range is not None:  # p -> 1 - p: black and white values swap
            meta = replace(meta, value_range=(meta.value_range[1], meta.value_range[0]))
        done = ([f"rotated back by {rotation} degrees" if rotation != 180 else "turned the right way up"]
                if rotation else []) + (["made positive again (it was inverted)"] if inverted else [])
        note = ("Corrected before analysis: the film was " + " and ".join(done) + ". Boxes and heatmaps refer "
                "to the corrected film. Check the correction against the film.")
        again = analyse(replace(self.image, pixels=pixels, meta=meta), classifier=self.classifier,
                        age_group=self.prediction.age_group if self.prediction else None,
                        include_identifiers=self.include_identifiers)
        return replace(again, correction=note)

    def card(self) -> dict[str, Any] | None:
        """The classifier's model card (what it was trained on, its limits), if any."""
        if self.classifier is not None and getattr(self.classifier, "card", None):
            return self.classifier.card
        if self.prediction is None:
            return None
        try:
            return read_card(self.prediction.model)
        except Exception:  # a missing or unreadable card only leaves the limits out
            return None

    def record(
        self,
        *,
        boxes: Iterable[Box] | None = None,
        detector_conf: float | None = None,
        heatmap_method: str | None = None,
        notes: Iterable[str] | None = None,
        generated_at: str | None = None,
    ) -> dict[str, Any]:
        """The JSON-ready report record (`cxr_core.report` schema) of what was shown.

        `boxes` are the findings shown (None: the detector layer was off); `notes` default to
        `self.notes(boxes)`.
        """
        from cxr_core import report

        boxes = list(boxes) if boxes is not None else None
        det_card = det_label = None
        if boxes is not None:
            det_card, det_label = detector_identity()
        return report.build_record(
            self.image, quality=self.quality, prediction=self.prediction, boxes=boxes,
            model_card=self.card(), detector_card=det_card, detector_label=det_label,
            detector_conf=detector_conf, heatmap_method=heatmap_method,
            include_identifiers=self.include_identifiers,
            notes=self.notes(boxes) if notes is None else list(notes), generated_at=generated_at,
        )

    def row(self) -> dict[str, Any]:
        """One flat line (CSV / DataFrame) with the fields `python -m cxr_core.predict` prints."""
        classes = self.classifier.classes if self.classifier is not None else None
        return prediction_row(self.quality, self.prediction, classes) | {"orientation": orientation_label(self.quality)}


def prediction_row(quality: QualityReport | None, pred: Prediction | None,
                   classes: Iterable[str] | None = None) -> dict[str, Any]:
    """The flat fields of one analysed image; empty values where no classifier was used.

    Probability columns follow the prediction's classes (`classes`, when given, names them where
    there is no prediction: the classifier that would have been used)."""
    if pred is None:
        return {c: "" for c in settings.prob_columns(classes or settings.CLASSES)} | {
            "predicted": "", "confidence": "", "abstained": "", "quality": quality.verdict if quality else "",
            "age_group": "", "reasons": "", "error": ""}
    return {f"p_{c}": round(p, 4) for c, p in pred.probabilities.items()} | {
        "predicted": pred.predicted,
        "confidence": round(pred.confidence, 4),
        "abstained": pred.abstained,
        "quality": quality.verdict if quality else "",
        "age_group": pred.age_group or "",
        "reasons": " | ".join(pred.reasons),
        "error": "",
    }


def row_columns(classes: Iterable[str] = settings.CLASSES) -> tuple[str, ...]:
    """The columns of `Analysis.row()` plus `file`, in CSV order, for a classifier with `classes`."""
    return ("file", *settings.prob_columns(classes), "predicted", "confidence", "abstained", "quality", "age_group",
            "reasons", "error", "orientation")


ROW_COLUMNS: tuple[str, ...] = row_columns()  # the shipped cxr3 classifiers' columns


def orientation_label(quality: QualityReport | None) -> str:
    """'upright', or what the orientation check read ('rotated 90', 'inverted', 'mirrored' ...);
    '' when it did not run."""
    found = getattr(quality, "orientation", None)
    if not found:
        return ""
    parts = ([f"rotated {found['rotation']}"] if found.get("rotation") else []) + [
        name for name in ("mirrored", "inverted") if found.get(name)]
    return " ".join(parts) or "upright"


def detector_identity() -> tuple[dict[str, Any] | None, str | None]:
    """(detector card, the label the app shows for it), read from weights/ next to detector.pt."""
    from cxr_core.ui.cards import detector_label, load_detector_files  # card I/O only: no plotly

    files = load_detector_files()
    return files["card"], detector_label(files["card"], files["figures"])


def detector_threshold(card: Mapping[str, Any] | None = None) -> float:
    """The detector's default box threshold: the card's operating point (false positives per Normal film and
    TB precision, `detect operating-point`), else its best validation F1, else the settings default."""
    if card is None:
        card = detector_identity()[0]
    from cxr_core.detect.predict import default_threshold  # the card's operating point (docs/detector.md)

    return default_threshold(dict(card or {}))


def analyse(
    source: Source,
    *,
    classifier: Classifier | str | None,
    age_group: str | None = None,
    filename: str | None = None,
    include_identifiers: bool = False,
    check_quality: bool = True,
) -> Analysis:
    """Decode, quality-check and classify one image, as the app does.

    `classifier` is a loaded `Classifier`, a registry name (loaded once per process) or None
    (no classification: image and quality only). `age_group` defaults to the DICOM header's
    band; calls outside the population the model learned a class from are abstained.
    Raises `ImageLoadError` for unusable files and `ModelUnavailableError` for missing weights.
    """
    image = decode(source, filename, include_identifiers=include_identifiers)
    # module attributes, not imported names: tests and tools may swap a stage in one place
    quality = quality_gate.assess(image) if check_quality else None
    clf = load_classifier(classifier) if isinstance(classifier, str) else classifier
    prediction = classify.predict(image, clf, quality=quality, age_group=age_group) if clf is not None else None
    return Analysis(image=image, quality=quality, prediction=prediction, classifier=clf,
                    include_identifiers=include_identifiers)
