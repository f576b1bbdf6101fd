"""DICOM outputs of one analysis: a Comprehensive SR and a secondary capture of the overlay.

    from cxr_core.pacs.outputs import dicom_outputs
    out = dicom_outputs(analysis, dicom_bytes, boxes=analysis.boxes())
    out.sr_bytes, out.sc_bytes        # Part 10 files, ready to download or to STOW

Both objects join the source image's study as new series and say which algorithm made them
(name, version, SHA-256 of the weights). From the source only the attributes the Patient and
General Study modules require are copied (patient name / ID / birth date / sex, study UID,
date, time, ID, accession number, referring physician: Type 1/2 there); nothing else (age,
institution, other IDs) leaves the source.

The SR (Comprehensive SR, 1.2.840.10008.5.1.4.1.1.88.33) holds, under one root container:
the classification (most probable class, the suggested class unless abstained, every class's
calibrated probability, the abstention flag and its reasons, the algorithm identification,
TID 4019), the quality verdict with its reasons, and one container per detector box with its
finding, score, whether the class was validated, and an image region (SCOORD POLYLINE,
closed rectangle, in the source image's pixel coordinates) selected from the source image.
Concepts without a standard code use the private scheme "99CXRDS". `read_sr` reads it back.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from cxr_core import settings
from cxr_core.provenance import weights_sha256

if TYPE_CHECKING:
    import pydicom

    from cxr_core.detection.detect import Box
    from cxr_core.pipeline import Analysis

SCHEME = "99CXRDS"  # private coding scheme for concepts without a standard code
MANUFACTURER = "cxr-decision-support (research prototype)"
BURNT_IN_TEXT = "Decision support, not a diagnosis"
SR_SERIES_DESCRIPTION = "CXR AI decision support report (not a diagnosis)"
SC_SERIES_DESCRIPTION = "CXR AI overlay (decision support, not a diagnosis)"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902

# Source attributes copied into the outputs: the Patient and General Study modules' Type 1/2 ones.
REQUIRED_FROM_SOURCE: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


def _code(value: str, meaning: str, scheme: str = SCHEME):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


# Concept names. Standard where DICOM/SNOMED has one.
def _c_finding():
    return _code("121071", "Finding", "DCM")


def _c_comment():
    return _code("121106", "Comment", "DCM")


def _yes_no(flag: bool):
    return _code("373066001", "Yes", "SCT") if flag else _code("373067005", "No", "SCT")


C_ROOT = ("CXRDS-RESULT", "Chest X-ray decision support result")
C_CLASSIFICATION = ("CXRDS-CLS", "Chest X-ray classification")
C_MOST_PROBABLE = ("CXRDS-TOP", "Most probable class")
C_ABSTAINED = ("CXRDS-ABST", "Abstained from a suggestion")
C_REASON = ("CXRDS-REASON", "Abstention reason")
C_CONFIDENCE = ("CXRDS-CONF", "Calibrated confidence")
C_AGE = ("CXRDS-AGE", "Age group used")
C_QUALITY = ("CXRDS-QC", "Image quality check")
C_VERDICT = ("CXRDS-QCV", "Quality verdict")
C_QREASON = ("CXRDS-QCR", "Quality reason")
C_DETECTION = ("CXRDS-DET", "Abnormality detection")
C_DET_THRESHOLD = ("CXRDS-DETT", "Detector score threshold")
C_BOX = ("CXRDS-BOX", "Detected region")
C_SCORE = ("CXRDS-SCORE", "Detection score")
C_VALIDATED = ("CXRDS-VAL", "Finding class validated")
C_NONE_FOUND = ("CXRDS-DETN", "Detected region count")


def _short(cls: str) -> str:
    """A class's code value part: code values are SH, at most 16 characters."""
    return "".join(ch for ch in cls.upper() if ch.isalnum())[:12]


def _prob_code(cls: str):
    return _code(f"P-{_short(cls)}", f"Probability of {settings.class_label(cls)}")


def _class_code(cls: str):
    return _code(f"C-{_short(cls)}", settings.class_label(cls))


def _det_code(box: Box):
    return _code(f"D-{int(box.class_id)}", str(box.label))


_NO_UNITS = ("1", "no units", "UCUM")


# --- algorithm identity ------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """What produced a result: shown in the SR (TID 4019) and in the secondary capture's header."""

    name: str
    version: str
    weights_sha256: str | None

    def parameters(self) -> list[str]:
        return [f"weights SHA-256 {self.weights_sha256}"] if self.weights_sha256 else []

    def text(self) -> str:
        sha = f", weights SHA-256 {self.weights_sha256[:16]}" if self.weights_sha256 else ""
        return f"{self.name} {self.version}{sha}"


def _version(card: dict | None) -> str:
    from cxr_core.report import model_version

    v = model_version(card)
    parts = [str(p) for p in (v.get("date"), (v.get("code_version") or "")[:12]) if p]
    return "+".join(parts) or "unversioned"


def classifier_algorithm(analysis: Analysis) -> Algorithm | None:
    if analysis.prediction is None:
        return None
    from cxr_core.models import weights_path

    card = analysis.card() or {}
    name = str(card.get("display_name") or card.get("name") or analysis.prediction.model)
    return Algorithm(name=name, version=_version(card), weights_sha256=weights_sha256(weights_path(analysis.prediction.model)))


def detector_algorithm() -> Algorithm:
    from cxr_core import pipeline

    card, _label = pipeline.detector_identity()
    card = card or {}
    name = str(card.get("name") or "CXR abnormality detector")
    version = str(card.get("date") or card.get("version") or (card.get("code_version") or "")[:12] or "unversioned")
    return Algorithm(name=name[:64], version=version, weights_sha256=weights_sha256(settings.DETECTOR_WEIGHTS))


# --- the source -------------------------------------------------------------------------------------


def read_source(source: bytes | "pydicom.Dataset") -> "pydicom.Dataset":
    """The source dataset (header only is enough) from Part 10 bytes or a Dataset."""
    import pydicom

    if isinstance(source, pydicom.Dataset):
        return source
    data = bytes(source)
    if data[:4] == b"DICM":
        data = b"\x00" * 128 + data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            ok = any(k in ds for k in ("SOPClassUID", "StudyInstanceUID", "Modality", "Rows"))
    except Exception:
        ok = False
    if not ok:
        raise ValueError("The source is not a readable DICOM file; SR and secondary capture need one.")
    return ds


def reference_dataset(source: "pydicom.Dataset") -> "pydicom.Dataset":
    """A header with only what the outputs may copy: REQUIRED_FROM_SOURCE plus the source's UIDs.

    Missing UIDs (a DICOM file from outside a PACS) are generated, so the outputs still form a
    valid study; missing Type 2 values stay empty.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ref = Dataset()
    for keyword in REQUIRED_FROM_SOURCE:
        value = source.get(keyword)
        setattr(ref, keyword, value if value is not None else "")
    if not ref.StudyInstanceUID:
        ref.StudyInstanceUID = generate_uid()
    ref.SeriesInstanceUID = str(source.get("SeriesInstanceUID") or generate_uid())
    ref.SOPInstanceUID = str(source.get("SOPInstanceUID") or generate_uid())
    ref.SOPClassUID = str(source.get("SOPClassUID") or SecondaryCaptureImageStorage)
    ref.Modality = str(source.get("Modality") or "OT")
    return ref


# --- the structured report ------------------------------------------------------------------------


def _children(parent, items: Iterable[Any]):
    from highdicom.sr import ContentSequence

    items = list(items)
    if items:
        parent.ContentSequence = ContentSequence(items)
    return parent


def _container(concept: tuple[str, str], items: Iterable[Any], relationship: str | None = "CONTAINS"):
    from highdicom.sr import ContainerContentItem

    return _children(ContainerContentItem(name=_code(*concept), relationship_type=relationship), items)


def _text(concept, value: str, relationship: str = "CONTAINS"):
    from highdicom.sr import TextContentItem

    name = concept if not isinstance(concept, tuple) else _code(*concept)
    return TextContentItem(name=name, value=str(value)[:1024] or "-", relationship_type=relationship)


def _num(concept, value: float):
    from highdicom.sr import CodedConcept, NumContentItem

    name = concept if not isinstance(concept, tuple) else _code(*concept)
    return NumContentItem(name=name, value=float(value), unit=CodedConcept(*_NO_UNITS), relationship_type="CONTAINS")


def _codeitem(concept, value):
    from highdicom.sr import CodeContentItem

    name = concept if not isinstance(concept, tuple) else _code(*concept)
    return CodeContentItem(name=name, value=value, relationship_type="CONTAINS")


def _algorithm_items(algo: Algorithm) -> list:
    from highdicom.sr import AlgorithmIdentification

    return list(AlgorithmIdentification(name=algo.name[:64], version=algo.version[:64],
                                        parameters=algo.parameters() or None))


def _rectangle(box: Box) -> np.ndarray:
    x0, y0, x1, y1 = float(box.x0), float(box.y0), float(box.x1), float(box.y1)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _sr_content(analysis: Analysis, ref, boxes: Sequence[Box] | None, detector_conf: float | None):
    from highdicom.sr import (DeviceObserverIdentifyingAttributes, ImageContentItem, ImageRegion,
                              ObserverContext, SourceImageForRegion)
    from pydicom.sr.codedict import codes

    items: list = []
    algo = classifier_algorithm(analysis)
    observer = algo or Algorithm("CXR decision support", "unversioned", None)
    from pydicom.uid import generate_uid

    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[observer.name, observer.version]), name=observer.name[:64],
        manufacturer_name=MANUFACTURER[:64], model_name=observer.version[:64])
    items += list(ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    items.append(ImageContentItem(name=_code("121112", "Source of Measurement", "DCM"),
                                  referenced_sop_class_uid=ref.SOPClassUID,
                                  referenced_sop_instance_uid=ref.SOPInstanceUID, relationship_type="CONTAINS"))
    items.append(_text(_c_comment(), settings.DISCLAIMER))

    pred = analysis.prediction
    if pred is not None and algo is not None:
        cls_items = _algorithm_items(algo)
        cls_items.append(_codeitem(C_MOST_PROBABLE, _class_code(pred.predicted)))
        if not pred.abstained:
            cls_items.append(_codeitem(_c_finding(), _class_code(pred.predicted)))
        cls_items.append(_codeitem(C_ABSTAINED, _yes_no(bool(pred.abstained))))
        cls_items += [_text(C_REASON, r) for r in (pred.reasons if pred.abstained else [])]
        for c, p in pred.probabilities.items():  # the classifier's classes, in its output order
            cls_items.append(_num(_prob_code(c), float(p)))
        cls_items.append(_num(C_CONFIDENCE, float(pred.confidence)))
        cls_items.append(_text(C_AGE, pred.age_group or "not given"))
        items.append(_container(C_CLASSIFICATION, cls_items))

    q = analysis.quality
    if q is not None:
        items.append(_container(C_QUALITY, [_text(C_VERDICT, q.verdict)] + [_text(C_QREASON, r) for r in q.reasons]))

    if boxes is not None:
        det_items = _algorithm_items(detector_algorithm())
        if detector_conf is not None:
            det_items.append(_num(C_DET_THRESHOLD, float(detector_conf)))
        det_items.append(_num(C_NONE_FOUND, float(len(boxes))))
        source = SourceImageForRegion(referenced_sop_class_uid=ref.SOPClassUID,
                                      referenced_sop_instance_uid=ref.SOPInstanceUID)
        for b in boxes:
            region = ImageRegion(graphic_type="POLYLINE", graphic_data=_rectangle(b), source_image=source)
            det_items.append(_container(C_BOX, [
                _codeitem(_c_finding(), _det_code(b)),
                _num(C_SCORE, float(b.confidence)),
                _codeitem(C_VALIDATED, _yes_no(bool(b.validated))),
                region,
            ]))
        items.append(_container(C_DETECTION, det_items))
    return _container(C_ROOT, items, relationship=None)


def structured_report(
    analysis: Analysis,
    source: bytes | "pydicom.Dataset",
    *,
    boxes: Sequence[Box] | None = None,
    detector_conf: float | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    sop_uid: str | None = None,
):
    """The Comprehensive SR (a highdicom dataset) of `analysis` on the `source` image."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    ref = reference_dataset(read_source(source))
    content = _sr_content(analysis, ref, list(boxes) if boxes is not None else None, detector_conf)
    algo = classifier_algorithm(analysis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.ComprehensiveSR(
            evidence=[ref], content=content,
            series_instance_uid=series_uid or generate_uid(), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_uid or generate_uid(), instance_number=int(instance_number),
            manufacturer=MANUFACTURER[:64], is_complete=True, is_final=False, is_verified=False,
            series_description=SR_SERIES_DESCRIPTION[:64],
            manufacturer_model_name=(algo.name if algo else "CXR decision support")[:64],
            software_versions=(algo.version if algo else "unversioned")[:64],
        )
    return sr


# --- the secondary capture ---------------------------------------------------------------------------


def _banner(rgb: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The image with a black band on top holding `lines` in white (burnt in; no pixel hidden)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(0.35, w / 1400.0)
    thickness = max(1, int(round(scale * 1.6)))
    line_h = int(round(28 * scale)) + 4
    band = np.zeros((line_h * len(lines) + 8, w, 3), np.uint8)
    for i, text in enumerate(lines):
        font_scale = scale * (1.0 if i == 0 else 0.8)
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        while tw > w - 8 and font_scale > 0.2:  # keep every line inside the width
            font_scale *= 0.9
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        cv2.putText(band, text, (4, line_h * (i + 1) - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([band, rgb], axis=0))


def summary_line(analysis: Analysis) -> str:
    pred = analysis.prediction
    if pred is None:
        return "No classification"
    if pred.abstained:
        return f"No suggestion (abstained); most probable {pred.label} {pred.confidence:.0%}"
    return f"Suggestion: {pred.label} ({pred.confidence:.0%})"


def overlay_image(
    analysis: Analysis,
    boxes: Sequence[Box] | None = None,
    *,
    heatmap: bool = True,
    heatmap_method: str | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 view as the app draws it: the film, the heatmap (when a classifier ran and
    `heatmap`), the boxes; no banner. A heatmap that cannot be computed is left out."""
    from cxr_core import dashboard, detection
    from cxr_core.classify import explain

    rgb = dashboard.to_rgb(analysis.image.pixels)
    if heatmap and analysis.prediction is not None and analysis.classifier is not None:
        try:
            rgb = explain.overlay(rgb, analysis.heatmap(method=heatmap_method).map, alpha, fade=True)
        except Exception:
            pass
    if boxes:
        rgb = detection.draw_boxes(rgb, list(boxes), scale=dashboard.box_scale(analysis.image))
    return rgb


def _patient_orientation(source) -> tuple[str, str]:
    value = source.get("PatientOrientation")
    try:
        row, col = str(value[0]), str(value[1])
        from highdicom.enum import PatientOrientationValuesBiped as P

        P(row), P(col)
        return row, col
    except Exception:
        return "L", "F"  # how frontal chest films are displayed: patient's left to the right, feet down


def secondary_capture(
    analysis: Analysis,
    source: bytes | "pydicom.Dataset",
    *,
    boxes: Sequence[Box] | None = None,
    overlay: np.ndarray | None = None,
    heatmap: bool = True,
    heatmap_method: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    sop_uid: str | None = None,
):
    """Secondary capture (a highdicom dataset) of the overlay with the disclaimer burnt in.

    `overlay`: an RGB uint8 image to use as it is (e.g. the composite the Diagnose page showed);
    default `overlay_image(analysis, boxes, heatmap=...)`.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    src = read_source(source)
    ref = reference_dataset(src)
    rgb = overlay if overlay is not None else overlay_image(analysis, boxes, heatmap=heatmap,
                                                             heatmap_method=heatmap_method)
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb[..., :3].astype(np.uint8))
    algo = classifier_algorithm(analysis)
    lines = [BURNT_IN_TEXT, summary_line(analysis), algo.text() if algo else "No classifier"]
    pixels = _banner(rgb, lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = hd.sc.SCImage(
            pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            study_instance_uid=ref.StudyInstanceUID, series_instance_uid=series_uid or generate_uid(),
            series_number=SC_SERIES_NUMBER, sop_instance_uid=sop_uid or generate_uid(),
            instance_number=int(instance_number), manufacturer=MANUFACTURER[:64],
            patient_id=str(ref.PatientID or ""), patient_name=ref.PatientName or None,
            patient_birth_date=str(ref.PatientBirthDate or "") or None,
            patient_sex=str(ref.PatientSex or "") or None,
            accession_number=str(ref.AccessionNumber or ""), study_id=str(ref.StudyID or ""),
            study_date=str(ref.StudyDate or "") or None, study_time=str(ref.StudyTime or "") or None,
            referring_physician_name=ref.ReferringPhysicianName or None,
            patient_orientation=_patient_orientation(src),
            series_description=SC_SERIES_DESCRIPTION[:64],
            manufacturer_model_name=(algo.name if algo else "CXR decision support")[:64],
            software_versions=(algo.version if algo else "unversioned")[:64],
        )
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "ReferringPhysicianName"):  # Type 2: present, possibly empty
        if keyword not in sc:
            setattr(sc, keyword, "")
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # workstation: produced by software from the source image
    sc.ImageComments = BURNT_IN_TEXT
    sc.DerivationDescription = (f"Overlay of AI decision support on the source radiograph: "
                                f"{algo.text() if algo else 'no classifier'}. {BURNT_IN_TEXT}.")[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = [item]
    return sc


# --- both -------------------------------------------------------------------------------------------


def to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class DicomOutputs:
    """The two objects of one analysed image. UIDs are identifiers: never log them."""

    sr: Any  # highdicom ComprehensiveSR (a pydicom Dataset)
    sc: Any  # highdicom SCImage
    sr_bytes: bytes
    sc_bytes: bytes

    @property
    def datasets(self) -> list[Any]:
        return [self.sr, self.sc]


def dicom_outputs(
    analysis: Analysis,
    source: bytes | "pydicom.Dataset",
    *,
    boxes: Sequence[Box] | None = None,
    detector_conf: float | None = None,
    overlay: np.ndarray | None = None,
    heatmap: bool = True,
    heatmap_method: str | None = None,
    sr_series_uid: str | None = None,
    sc_series_uid: str | None = None,
    instance_number: int = 1,
) -> DicomOutputs:
    """SR and secondary capture of one analysis of the DICOM `source` (its Part 10 bytes).

    `boxes`: the detector findings to report (None: the detector was not used; [] it found none).
    `overlay`: the RGB image to capture (default: film + heatmap + boxes as the app draws them).
    Raises ValueError when `source` is not DICOM (PNG/JPEG uploads have no study to join).
    """
    src = read_source(source)
    sr = structured_report(analysis, src, boxes=boxes, detector_conf=detector_conf, series_uid=sr_series_uid,
                           instance_number=instance_number)
    sc = secondary_capture(analysis, src, boxes=boxes, overlay=overlay, heatmap=heatmap,
                           heatmap_method=heatmap_method, series_uid=sc_series_uid,
                           instance_number=instance_number)
    return DicomOutputs(sr=sr, sc=sc, sr_bytes=to_bytes(sr), sc_bytes=to_bytes(sc))


# --- reading an SR back --------------------------------------------------------------------------------


def _concept(item) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ("", "")
    return (_value_of(seq[0]), str(seq[0].CodingSchemeDesignator))


def _value_of(code_item) -> str:
    return str(code_item.get("CodeValue") or code_item.get("LongCodeValue") or code_item.get("URNCodeValue") or "")


def _code_value(item) -> str:
    seq = item.get("ConceptCodeSequence")
    return _value_of(seq[0]) if seq else ""


def _walk(items) -> Iterable[Any]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def read_sr(data: bytes | "pydicom.Dataset", classes: Sequence[str] = settings.CLASSES) -> dict[str, Any]:
    """What an SR written by `structured_report` says, as plain values (for tests and tools):
    {predicted, suggested, abstained, reasons, probabilities, confidence, quality, quality_reasons,
    boxes: [{label, class_id, confidence, validated, box_xyxy, referenced_sop_uid}], algorithms}.
    `classes`: the class names the writing classifier had (code values are shortened names)."""
    import pydicom

    ds = data if isinstance(data, pydicom.Dataset) else pydicom.dcmread(io.BytesIO(bytes(data)), force=True)
    out: dict[str, Any] = {"predicted": None, "suggested": None, "abstained": None, "reasons": [],
                           "probabilities": {}, "confidence": None, "quality": None, "quality_reasons": [],
                           "boxes": [], "algorithms": []}
    by_code = {f"P-{_short(c)}": c for c in classes}
    by_class = {f"C-{_short(c)}": c for c in classes}
    for top in ds.get("ContentSequence") or []:
        concept = _concept(top)
        if concept == (C_CLASSIFICATION[0], SCHEME):
            for item in top.get("ContentSequence") or []:
                code, scheme = _concept(item)
                if code == C_MOST_PROBABLE[0]:
                    out["predicted"] = by_class.get(_code_value(item))
                elif (code, scheme) == ("121071", "DCM"):
                    out["suggested"] = by_class.get(_code_value(item))
                elif code == C_ABSTAINED[0]:
                    out["abstained"] = _code_value(item) == "373066001"
                elif code == C_REASON[0]:
                    out["reasons"].append(str(item.TextValue))
                elif code in by_code:
                    out["probabilities"][by_code[code]] = float(item.MeasuredValueSequence[0].NumericValue)
                elif code == C_CONFIDENCE[0]:
                    out["confidence"] = float(item.MeasuredValueSequence[0].NumericValue)
                elif (code, scheme) == ("111001", "DCM"):  # Algorithm Name (TID 4019)
                    out["algorithms"].append(str(item.TextValue))
        elif concept == (C_QUALITY[0], SCHEME):
            for item in top.get("ContentSequence") or []:
                code = _concept(item)[0]
                if code == C_VERDICT[0]:
                    out["quality"] = str(item.TextValue)
                elif code == C_QREASON[0]:
                    out["quality_reasons"].append(str(item.TextValue))
        elif concept == (C_DETECTION[0], SCHEME):
            for item in top.get("ContentSequence") or []:
                if _concept(item) == ("111001", "DCM"):
                    out["algorithms"].append(str(item.TextValue))
                if _concept(item) != (C_BOX[0], SCHEME):
                    continue
                box: dict[str, Any] = {}
                for sub in _walk(item.get("ContentSequence")):
                    code, scheme = _concept(sub)
                    if (code, scheme) == ("121071", "DCM"):
                        seq = sub.ConceptCodeSequence[0]
                        box["label"] = str(seq.CodeMeaning)
                        box["class_id"] = int(_value_of(seq).removeprefix("D-"))
                    elif code == C_SCORE[0]:
                        box["confidence"] = float(sub.MeasuredValueSequence[0].NumericValue)
                    elif code == C_VALIDATED[0]:
                        box["validated"] = _code_value(sub) == "373066001"
                    elif sub.get("ValueType") == "SCOORD":
                        pts = np.asarray(sub.GraphicData, dtype=np.float64).reshape(-1, 2)
                        box["box_xyxy"] = [float(pts[:, 0].min()), float(pts[:, 1].min()),
                                           float(pts[:, 0].max()), float(pts[:, 1].max())]
                    elif sub.get("ValueType") == "IMAGE":
                        box["referenced_sop_uid"] = str(sub.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                out["boxes"].append(box)
    return out
