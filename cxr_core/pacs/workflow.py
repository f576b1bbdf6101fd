"""Analyse one PACS study: every frontal CR/DX instance -> `pipeline.analyse` -> SR + secondary capture
-> (optionally) STOW back, checked by QIDO before it is reported as sent.

Scope is decided from the header before anything is retrieved (QIDO fields) and again from the
retrieved file: other modalities (CT, MR, ... and our own SR / secondary captures), lateral or
oblique views and multi-frame objects are refused with the same wording as uploads. A study with
no usable image is a `PacsError` (kind "refused"). Nothing here logs an identifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cxr_core import settings
from cxr_core.pacs.client import RADIOGRAPH_MODALITIES, InstanceRef, PacsClient, PacsError
from cxr_core.pacs.outputs import DicomOutputs, dicom_outputs

log = logging.getLogger(__name__)

# Errors that end the whole study: the next request would fail the same way.
_FATAL = {"unreachable", "unauthorised", "forbidden", "timeout", "config"}


@dataclass
class InstanceResult:
    """One instance of the study: analysed (with outputs), refused (out of scope) or failed."""

    ref: InstanceRef
    status: str  # "analysed" | "refused" | "failed"
    message: str = ""
    analysis: Any = None  # pipeline.Analysis
    boxes: list | None = None
    outputs: DicomOutputs | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyResult:
    study_uid: str
    instances: list[InstanceResult]
    sr_series_uid: str
    sc_series_uid: str
    pushed: bool = False
    push_message: str = ""

    @property
    def analysed(self) -> list[InstanceResult]:
        return [r for r in self.instances if r.status == "analysed"]

    def outputs(self) -> list[DicomOutputs]:
        return [r.outputs for r in self.analysed if r.outputs is not None]

    def summary(self) -> str:
        """One line without identifiers."""
        n = len(self.instances)
        counts = {s: sum(r.status == s for r in self.instances) for s in ("analysed", "refused", "failed")}
        text = (f"{counts['analysed']} of {n} instance(s) analysed, {counts['refused']} out of scope, "
                f"{counts['failed']} failed.")
        if self.pushed:
            text += f" {len(self.outputs()) * 2} result object(s) stored in the PACS."
        return text


def scope_problem(modality: str | None, view: str | None, frames: int | None) -> str | None:
    """Why a header puts an instance outside the models' scope (the wording uploads get), or None."""
    m = (modality or "").strip().upper()
    if m and m not in RADIOGRAPH_MODALITIES:
        return (f"The DICOM header says modality {m}: the models read chest radiographs (CR/DX) only.")
    v = (view or "").strip().upper()
    if v in settings.NON_FRONTAL_VIEWS:
        return (f"The DICOM header says view {v} (lateral or oblique): the models read frontal (PA/AP) "
                "films only.")
    if frames is not None and frames > 1:
        return f"The DICOM file holds {frames} frames; upload a single-frame radiograph."
    return None


def _detector_ready() -> bool:
    return Path(settings.DETECTOR_WEIGHTS).is_file()


def analyse_study(
    client: PacsClient,
    study_uid: str,
    *,
    classifier: Any = settings.DEFAULT_CLASSIFIER,
    age_group: str | None = None,
    detector: bool = True,
    detector_conf: float | None = None,
    heatmap: bool = True,
    push: bool = False,
    include_identifiers: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> StudyResult:
    """Retrieve and analyse every in-scope instance of the study; build its SR and secondary capture.

    With `push`, store them back (see `push_results`). Raises PacsError when the study is not
    found, holds no CR/DX image, or the server fails in a way that ends the whole study.
    """
    from pydicom.uid import generate_uid

    from cxr_core import pipeline
    from cxr_core.io import ImageLoadError
    from cxr_core.models import load_classifier

    refs = client.list_instances(study_uid)
    if not refs:
        raise PacsError("The study was not found on the PACS (or it holds no instances).", "not_found")
    result = StudyResult(study_uid=study_uid, instances=[], sr_series_uid=generate_uid(), sc_series_uid=generate_uid())
    todo: list[InstanceRef] = []
    for ref in refs:
        problem = scope_problem(ref.modality, ref.view_position, ref.n_frames)
        if problem:
            result.instances.append(InstanceResult(ref, "refused", problem))
        else:
            todo.append(ref)
    if not todo:
        modalities = sorted({(r.modality or "?").upper() for r in refs})
        reasons = sorted({r.message for r in result.instances})
        raise PacsError("This study holds no frontal CR/DX radiograph to analyse (modalities: "
                        f"{', '.join(modalities)}). " + " ".join(reasons[:2]), "refused")

    clf = load_classifier(classifier) if isinstance(classifier, str) else classifier
    use_detector = detector and _detector_ready()
    threshold = None
    if use_detector:
        threshold = pipeline.detector_threshold() if detector_conf is None else float(detector_conf)
    number = 0
    for i, ref in enumerate(todo):
        if progress:
            progress(i, len(todo))
        try:
            data = client.retrieve(ref)
        except PacsError as exc:
            if exc.kind in _FATAL:
                raise
            result.instances.append(InstanceResult(ref, "failed", str(exc)))
            continue
        try:
            analysis = pipeline.analyse(data, classifier=clf, age_group=age_group,
                                        include_identifiers=include_identifiers)
        except ImageLoadError as exc:
            result.instances.append(InstanceResult(ref, "refused", str(exc)))
            continue
        except Exception as exc:
            log.warning("analysis failed (%s)", type(exc).__name__)
            result.instances.append(InstanceResult(ref, "failed", "The analysis failed for this image."))
            continue
        meta = analysis.image.meta
        problem = scope_problem(meta.modality, meta.view_position, None)
        if problem:
            result.instances.append(InstanceResult(ref, "refused", problem))
            continue
        item = InstanceResult(ref, "analysed", analysis=analysis)
        if use_detector:
            try:
                item.boxes = analysis.boxes(conf=threshold)
            except Exception as exc:
                log.warning("detector unavailable (%s)", type(exc).__name__)
                item.notes.append("The abnormality detector could not run; no boxes are reported.")
        item.notes += analysis.notes(item.boxes)
        number += 1
        try:
            item.outputs = dicom_outputs(analysis, data, boxes=item.boxes, detector_conf=threshold if item.boxes is not None else None,
                                         heatmap=heatmap, sr_series_uid=result.sr_series_uid,
                                         sc_series_uid=result.sc_series_uid, instance_number=number)
        except Exception as exc:
            log.warning("building DICOM outputs failed (%s)", type(exc).__name__)
            item.status, item.message = "failed", "The SR / secondary capture could not be built for this image."
        result.instances.append(item)
    if progress:
        progress(len(todo), len(todo))
    log.info("study analysed: %d analysed, %d refused, %d failed", len(result.analysed),
             sum(r.status == "refused" for r in result.instances), sum(r.status == "failed" for r in result.instances))
    if push:
        push_results(client, result)
    return result


def push_results(client: PacsClient, result: StudyResult) -> int:
    """Store every SR and secondary capture of `result` in its study, then check by QIDO that each
    one is there. Returns the number stored; `result.pushed` becomes True only after the check.
    Raises PacsError (kind "incomplete" when only some arrived: the message says how many)."""
    outputs = result.outputs()
    if not outputs:
        raise PacsError("Nothing to send: no image of this study was analysed.", "refused")
    datasets = [ds for o in outputs for ds in o.datasets]
    result.pushed = False
    client.store(datasets, result.study_uid)
    missing = [ds for ds in datasets
               if not client.instance_exists(result.study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))]
    if missing:
        result.push_message = (f"The PACS acknowledged the upload but {len(missing)} of {len(datasets)} result "
                               "objects cannot be found there. The results were not completely sent.")
        raise PacsError(result.push_message, "incomplete")
    result.pushed = True
    result.push_message = f"{len(datasets)} result object(s) stored in the study (SR and secondary capture series)."
    log.info("results stored: %d objects", len(datasets))
    return len(datasets)


def study_rows(result: StudyResult) -> list[dict[str, Any]]:
    """One display row per instance, without identifiers."""
    rows = []
    for i, r in enumerate(result.instances, 1):
        pred = r.analysis.prediction if r.analysis is not None else None
        q = r.analysis.quality if r.analysis is not None else None
        if pred is None:
            suggestion = ""
        else:
            suggestion = "Abstained" if pred.abstained else pred.label
        rows.append({
            "#": i,
            "Modality": r.ref.modality or "",
            "View": (r.analysis.image.meta.view_position if r.analysis is not None else r.ref.view_position) or "",
            "Status": r.status,
            "Quality": q.verdict if q else "",
            "Suggestion": suggestion,
            "Confidence": f"{pred.confidence:.0%}" if pred else "",
            "Boxes": "" if r.boxes is None else len(r.boxes),
            "Message": r.message or " ".join(r.notes),
        })
    return rows


__all__ = ["InstanceResult", "StudyResult", "analyse_study", "push_results", "scope_problem", "study_rows"]


