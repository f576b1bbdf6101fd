"""What the reading room says about one film: worklist rows and CSV, heatmap captions and sanity notes,
the boxes table, clinical metadata and the patient banner, and the upload reader that never raises.

No Streamlit here, so every number the app shows can be checked from a notebook or a test.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import pandas as pd

from cxr_core import settings
from cxr_core.provenance import measured_on
from cxr_core.ui.cards import class_label
from cxr_core.ui.figures import format_probability


NORMAL_SCOPE_NOTE = settings.NORMAL_SCOPE_NOTE  # the page's wording lives in settings
AGE_SCOPE_NOTE = settings.AGE_SCOPE_NOTE


WORKLIST_COLUMNS = ("File", "Quality", "Result", "Confidence", "Leaning (not an answer)", "Age group",
                    "Notes")


def worklist_row(name: str, quality: Any = None, prediction: Any = None, error: str | None = None) -> dict[str, str]:
    """One line of the Diagnose page's worklist overview: what a reader needs to triage the list.

    On an abstained row the class the model leaned to is given in its own column, marked as not an
    answer; "Notes" holds every reason and quality remark in full.
    """
    lean = "Leaning (not an answer)"
    row = {c: "" for c in WORKLIST_COLUMNS} | {"File": name}
    if error:
        return row | {"Result": "not analysed", "Notes": error}
    notes: list[str] = []
    if quality is not None:
        row["Quality"] = {"pass": "pass", "warn": "check", "fail": "not suitable"}.get(str(quality.verdict), str(quality.verdict))
        notes += [str(r) for r in (getattr(quality, "reasons", None) or [])]
    if prediction is None:
        return row | {"Result": "no model", "Notes": " ".join(notes + ["No trained classifier is selected."])}
    notes = [str(r) for r in (prediction.reasons or [])] + notes
    probs = dict(getattr(prediction, "probabilities", None) or {})
    leaning = max(probs, key=probs.get) if probs else prediction.predicted
    return row | {
        "Result": "abstained" if prediction.abstained else class_label(prediction.predicted),
        "Confidence": format_probability(prediction.confidence),
        lean: (f"{class_label(leaning)} ({format_probability(probs.get(leaning, prediction.confidence))}) — not an answer"
               if prediction.abstained and leaning else ""),
        "Age group": settings.AGE_GROUP_LABELS.get(prediction.age_group or "", "not given"),
        "Notes": " ".join(notes),
    }


def worklist_csv(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The worklist overview (all rows, as shown) as CSV bytes, built in memory."""
    df = pd.DataFrame(list(rows))
    return df.to_csv(index=False).encode("utf-8")


def heatmap_caption(heat: Any) -> str:
    """What a heatmap shows (and does not), with the share of it inside the lungs when known."""
    from cxr_core.classify.explain import METHODS

    text = (f"Heatmap ({METHODS[heat.method][1]}) for **{class_label(heat.target)}**: warm colours mark the "
            "regions that most raised this class's score. It shows where the model looked, not where disease is.")
    if heat.lung_fraction is not None:
        text += f" {heat.lung_fraction:.0%} of the highlight lies inside the lungs."
    return text


def sanity_note(sanity: Mapping[str, Any] | None, method: str, model: str | None = None) -> tuple[str, str]:
    """(level, text) about the sanity check of the heatmap method shown: 'warning' when it failed,
    'info' when this method was never checked (or, given `model`, was checked on weights that no longer
    ship), 'ok' when it passed. `sanity` must be that method's own result (`explain.sanity_result(model,
    method)`); a check of another method, or of other weights, says nothing here."""
    from cxr_core.classify.explain import METHODS

    label = METHODS[method][1] if method in METHODS else str(method)
    if not sanity or (sanity.get("method") not in (None, method)):
        return "info", (f"Heatmap sanity check: not checked for {label}. Nobody has tested whether {label} maps of "
                        "this model depend on what it learned; treat them as a rough hint.")
    passed = sanity.get("passed") or {}
    n = sanity.get("n_images")
    if model is not None and measured_on(sanity, model) == "OTHER weights":
        return "info", (f"Heatmap sanity check: the result on file was measured on other weights than the "
                        f"ones now shipped, so it says nothing about these {label} maps yet; treat them as a "
                        "rough hint.")
    if passed and all(passed.values()):
        return "ok", f"{label} passed the heatmap sanity checks ({n} test images)."
    failed = ", ".join(k.replace("_", " ") for k, ok in passed.items() if not ok) or "no result"
    ok = ", ".join(k.replace("_", " ") for k, good in passed.items() if good)
    return "warning", (f"{label} heatmaps of this model failed a sanity check ({failed}; {n} test images, "
                       f"{label}){f'; they passed {ok}' if ok else ''}: treat them as a rough hint only.")


SANITY_NOTE = (
    "Heatmap sanity checks on 30 class-balanced test films (`python -m cxr_core.explain sanity --n 30 --model NAME`, "
    "`weights/explain_sanity_NAME.json`). Randomisation (Adebayo et al. 2018): the map of the trained model against "
    "the map of the same network with random weights; low correlation is a pass. Deletion: the predicted-class "
    "probability while pixels are removed most-salient-first against random order (area under the curve; lower "
    "salient = pass). Removed pixels take a blurred copy's values ('blur'), or are re-filled from their neighbours "
    "(ROAD, Rong et al. 2022), which leaves no salt-and-pepper artefact where random pixels are scattered. "
    "'Measured on' compares the SHA-256 of the weights each result records with the weights the app now runs."
)


def sanity_table(results: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """One row per model with a sanity result: the numbers behind each check and whether it passed."""
    from cxr_core.classify.explain import METHODS
    from cxr_core.ui.cards import display_name

    def verdict(passed: Mapping[str, Any], key: str) -> str:
        return "" if key not in passed else ("pass" if passed[key] else "FAIL")

    rows = []
    for name, r in results.items():
        if not r:
            continue
        rnd, dele, road = r.get("randomisation") or {}, r.get("deletion") or {}, r.get("road") or {}
        passed = r.get("passed") or {}
        rows.append({
            "Model": display_name(name),
            "method (layer)": f"{METHODS[r['method']][1] if r.get('method') in METHODS else r.get('method')} "
                              f"({r.get('cam_layer', '?')})",
            "films": r.get("n_images"),
            "Spearman trained vs random": rnd.get("spearman_mean"),
            "randomisation": verdict(passed, "randomisation_spearman_below_0.5"),
            "blur deletion AUC: salient / random pixels": _pair(dele, "auc_salient_mean", "auc_random_mean"),
            "blur deletion": verdict(passed, "deletion_salient_below_random"),
            "ROAD deletion AUC: salient / random pixels": _pair(road, "auc_salient_mean", "auc_random_mean"),
            "ROAD deletion": verdict(passed, "road_salient_below_random") or "not run",
            "measured on": measured_on(r, name) or "",
        })
    return pd.DataFrame(rows)


def _pair(d: Mapping[str, Any], a: str, b: str) -> str:
    return f"{d[a]:.3f} / {d[b]:.3f}" if a in d and b in d else ""


def sanity_warning(sanity: Mapping[str, Any] | None, method: str | None = None) -> str | None:
    """The warning text when the shown method's heatmaps failed a sanity check, else None."""
    level, text = sanity_note(sanity, method or str((sanity or {}).get("method") or ""))
    return text if level == "warning" else None


def boxes_table(boxes: Iterable[Any]) -> pd.DataFrame:
    rows = [{
        "Finding": b.label,
        "Confidence": round(float(b.confidence), 3),
        "Validated": "yes" if getattr(b, "validated", False) else "not validated",
        "Box (x0, y0, x1, y1)": f"{b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f}",
    } for b in boxes]
    return pd.DataFrame(rows, columns=["Finding", "Confidence", "Validated", "Box (x0, y0, x1, y1)"])


def clinical_metadata(meta: Any, include_identifiers: bool = False) -> dict[str, str]:
    """The parts of ImageMeta a clinician cares about, formatted; identifiers only on request."""
    out: dict[str, str] = {}
    fmt = getattr(meta, "format", None)
    if fmt:
        out["Format"] = str(fmt)
    if getattr(meta, "modality", None):
        out["Modality"] = str(meta.modality)
    out["View"] = str(getattr(meta, "view_position", None) or "not stated")
    size = getattr(meta, "original_size", None)
    if size:
        out["Size (w x h)"] = f"{size[0]} x {size[1]} px"
    spacing = getattr(meta, "pixel_spacing", None)
    if spacing:
        out["Pixel spacing"] = f"{spacing[0]:.3f} x {spacing[1]:.3f} mm"
    if getattr(meta, "bit_depth", None):
        out["Bit depth"] = f"{meta.bit_depth}-bit"
    if getattr(meta, "photometric", None):
        out["Photometric"] = str(meta.photometric)
    if getattr(meta, "downscaled", False):
        out["Note"] = f"downscaled to {settings.WORKING_SIDE} px (long side) for processing"
    if include_identifiers:
        for k, v in (getattr(meta, "identifiers", None) or {}).items():
            out[readable_tag(k)] = str(v)  # as stored (the banner formats the few it shows)
    return out


DICOM_FIELD_NAMES = {
    "PatientName": "Patient name", "PatientID": "Patient ID", "PatientBirthDate": "Birth date",
    "PatientSex": "Sex", "PatientAge": "Age", "OtherPatientIDs": "Other patient IDs",
    "AccessionNumber": "Accession number", "StudyInstanceUID": "Study UID", "SeriesInstanceUID": "Series UID",
    "SOPInstanceUID": "Instance UID", "StudyDate": "Study date", "StudyTime": "Study time",
    "InstitutionName": "Institution", "ReferringPhysicianName": "Referring physician",
}


def readable_tag(keyword: str) -> str:
    """'PatientName' -> 'Patient name' (unknown keywords split at capitals)."""
    if keyword in DICOM_FIELD_NAMES:
        return DICOM_FIELD_NAMES[keyword]
    import re

    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(keyword)).split()
    return " ".join([words[0]] + [w.lower() for w in words[1:]]) if words else str(keyword)


def format_dicom_value(keyword: str, value: Any) -> str:
    """Dates as YYYY-MM-DD, person names 'Family^Given' as 'Family, Given', times as HH:MM."""
    v = str(value)
    if keyword.endswith("Date") and len(v) == 8 and v.isdigit():
        return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    if keyword.endswith("Time") and len(v) >= 4 and v[:4].isdigit():
        return f"{v[:2]}:{v[2:4]}"
    if keyword.endswith("Name") and "^" in v:
        return ", ".join(p for p in v.split("^") if p)
    if keyword == "PatientSex":
        return {"F": "female", "M": "male", "O": "other"}.get(v.upper(), v)
    return v


def patient_banner(meta: Any, include_identifiers: bool) -> dict[str, str]:
    """Name, patient ID, sex, age band, study date and view for a DICOM, only when identifiers are on."""
    ids = getattr(meta, "identifiers", None) or {}
    if not include_identifiers or not ids:
        return {}
    out = {readable_tag(k): format_dicom_value(k, ids[k]) for k in ("PatientName", "PatientID", "PatientSex")
           if ids.get(k)}
    if getattr(meta, "age_group", None):
        out["Age band"] = settings.AGE_GROUP_LABELS.get(meta.age_group, meta.age_group)
    if ids.get("StudyDate"):
        out["Study date"] = format_dicom_value("StudyDate", ids["StudyDate"])
    out["View"] = str(getattr(meta, "view_position", None) or "not stated")
    return out


def safe_load(data: bytes, filename: str | None, include_identifiers: bool = False) -> tuple[Any, str | None]:
    """(CXRImage, None) or (None, user-facing message). Never raises; never touches the disk."""
    try:
        from cxr_core.io import ImageLoadError, load_image
    except Exception:  # pragma: no cover - io is part of the skeleton
        return None, "The image reader is not available in this installation."
    try:
        return load_image(bytes(data), filename, include_identifiers=include_identifiers), None
    except ImageLoadError as exc:
        return None, str(exc)
    except Exception:
        return None, "The file could not be processed because of an unexpected error. Try another file."
