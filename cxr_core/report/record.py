"""The JSON record of one analysed image: everything the Diagnose page shows, as a plain dict.

`build_record` is what the JSON download, the PDF (`report.pdf`), batch rows and the PACS outputs
are made from, so every output says the same thing. Patient identifiers appear only if the caller
asked for them; nothing is written to disk.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Iterable, Mapping

import numpy as np

from cxr_core import settings

SCHEMA_VERSION = 1
TITLE = "Chest X-ray decision support report"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _image_section(image: Any, include_identifiers: bool) -> dict[str, Any]:
    meta = getattr(image, "meta", None)
    out: dict[str, Any] = {"filename": getattr(image, "filename", None)}
    if meta is not None:
        out.update({
            "format": meta.format,
            "original_size": list(meta.original_size),
            "processed_size": [int(image.pixels.shape[1]), int(image.pixels.shape[0])],
            "bit_depth": meta.bit_depth,
            "photometric": meta.photometric,
            "modality": meta.modality,
            "view_position": meta.view_position,
            "pixel_spacing_mm": list(meta.pixel_spacing) if meta.pixel_spacing else None,
        })
        if include_identifiers and meta.identifiers:
            out["identifiers"] = dict(meta.identifiers)
    return out


def _quality_section(quality: Any) -> dict[str, Any] | None:
    if quality is None:
        return None
    return {
        "verdict": getattr(quality, "verdict", None),
        "ok": bool(getattr(quality, "ok", False)),
        "reasons": list(getattr(quality, "reasons", []) or []),
        "metrics": _jsonable(dict(getattr(quality, "metrics", {}) or {})),
        "orientation": _jsonable(getattr(quality, "orientation", None)),
    }


def model_version(card: Mapping[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    """Identifying facts of a trained model taken from its card (what produced this result)."""
    card = card or {}
    cal = card.get("calibration") or {}
    data = card.get("data") or {}
    return {
        "name": card.get("name", name),
        "display_name": card.get("display_name", name),
        "date": card.get("date"),
        "code_version": card.get("code_version"),
        "data_manifest_sha256": data.get("manifest_sha256"),
        "temperature": cal.get("temperature"),
        "abstain_threshold": cal.get("abstain_threshold"),
        "faithful_to_paper": card.get("faithful_to_paper"),
    }


def _box_dict(b: Any) -> dict[str, Any]:
    return {
        "label": b.label,
        "class_id": int(getattr(b, "class_id", -1)),
        "confidence": float(b.confidence),
        "validated": bool(getattr(b, "validated", False)),
        "box_xyxy": [float(b.x0), float(b.y0), float(b.x1), float(b.y1)],
    }


def build_record(
    image: Any,
    *,
    quality: Any = None,
    prediction: Any = None,
    boxes: Iterable[Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
    detector_card: Mapping[str, Any] | None = None,
    detector_label: str | None = None,
    detector_conf: float | None = None,
    heatmap_method: str | None = None,
    include_identifiers: bool = False,
    notes: Iterable[str] = (),
    generated_at: str | None = None,
) -> dict[str, Any]:
    """Everything the page showed for one image, as a JSON-ready dict."""
    pred = prediction.to_dict() if prediction is not None and hasattr(prediction, "to_dict") else prediction
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": generated_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "disclaimer": settings.DISCLAIMER,
        "image": _image_section(image, include_identifiers),
        "quality": _quality_section(quality),
        "prediction": _jsonable(pred) if pred is not None else None,
        "classifier": model_version(model_card, getattr(prediction, "model", None)) if prediction is not None else None,
        "known_limits": list((model_card or {}).get("known_limits") or []),
        "explanation": {"method": heatmap_method} if heatmap_method else None,
        "findings": None,
        "notes": list(notes),
    }
    if boxes is not None:
        record["findings"] = {
            "detector": {**model_version(detector_card, "detector"), "label": detector_label},
            "confidence_threshold": detector_conf,
            "boxes": [_box_dict(b) for b in boxes],
        }
    return _jsonable(record)


def to_json(record: Mapping[str, Any]) -> bytes:
    return json.dumps(_jsonable(record), indent=2, ensure_ascii=False).encode("utf-8")
