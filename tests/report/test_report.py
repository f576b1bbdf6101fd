"""cxr_core.report: JSON record and PDF, built in memory with fpdf2's core fonts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from app_fixtures import make_card
from cxr_core import report, settings
from cxr_core.classify import Prediction
from cxr_core.io import load_image


@pytest.fixture
def image():
    from app_fixtures import chest_png_bytes

    return load_image(chest_png_bytes(200), "chest.png")


def _prediction(abstained=False):
    return Prediction(model="vbreathnet", probabilities={"covid": 0.05, "normal": 0.85, "viral_pneumonia": 0.10},
                      predicted="normal", confidence=0.85, abstained=abstained,
                      reasons=["Confidence 45% is below the 70% needed"] if abstained else [], temperature=1.3)


BOXES = [SimpleNamespace(x0=10.0, y0=20.0, x1=90.0, y1=120.0, class_id=14, label="Active tuberculosis",
                         confidence=0.66, validated=False)]
QUALITY = SimpleNamespace(verdict="warn", ok=True, reasons=["Low contrast — check exposure ≥ normal"],
                          metrics={"contrast": np.float32(0.12)})


def test_record_is_complete_and_json_serialisable(image):
    rec = report.build_record(image, quality=QUALITY, prediction=_prediction(), boxes=BOXES,
                              model_card=make_card("vbreathnet"), detector_card={"date": "2026-11-23"},
                              detector_label="research preview — trained on 647 images", detector_conf=0.25,
                              heatmap_method="gradcam")
    data = json.loads(report.to_json(rec))
    assert data["disclaimer"] == settings.DISCLAIMER
    assert data["prediction"]["predicted"] == "normal" and data["prediction"]["predicted_label"] == "Normal"
    assert data["classifier"]["code_version"] == "fixture" and data["classifier"]["temperature"] == 1.3
    assert data["quality"]["verdict"] == "warn" and isinstance(data["quality"]["metrics"]["contrast"], float)
    assert data["findings"]["boxes"][0]["validated"] is False
    assert data["findings"]["detector"]["label"].endswith("647 images")
    assert data["known_limits"] == ["FIXTURE LIMIT: viral pneumonia was only seen in children"]
    assert data["image"]["original_size"] == [200, 200] and "identifiers" not in data["image"]


def test_identifiers_only_on_request():
    from conftest import chest_phantom, make_dicom, to_uint16

    dcm = make_dicom(to_uint16(chest_phantom(128), 12), bits_stored=12)
    img = load_image(dcm, "x.dcm", include_identifiers=True)
    hidden = report.build_record(img)
    shown = report.build_record(img, include_identifiers=True)
    assert "identifiers" not in hidden["image"] and "Doe^Jane" not in report.to_json(hidden).decode()
    assert shown["image"]["identifiers"]["PatientName"] == "Doe^Jane"
    assert hidden["image"]["view_position"] == "PA" and hidden["image"]["pixel_spacing_mm"] == [0.139, 0.139]


@pytest.mark.parametrize("abstained", [False, True])
def test_pdf_renders_with_core_fonts(image, abstained):
    rec = report.build_record(image, quality=QUALITY, prediction=_prediction(abstained), boxes=BOXES,
                              model_card=make_card("vbreathnet"), detector_label="research preview — 647 images",
                              detector_conf=0.25, heatmap_method="gradcam", notes=["Note with unicode → ok"])
    rgb = np.repeat(image.to_uint8()[..., None], 3, axis=2)
    overlay = rgb.copy()
    overlay[..., 0] = 255
    pdf = report.to_pdf(rec, rgb, overlay)
    assert pdf.startswith(b"%PDF") and len(pdf) > 3000
    assert pdf.rstrip().endswith(b"%%EOF")


def test_pdf_without_prediction_or_images(image):
    pdf = report.to_pdf(report.build_record(image))
    assert pdf.startswith(b"%PDF")


def test_pdf_text_content(image):
    """The PDF states the disclaimer, the class and the 'not validated' flag (checked in the raw stream)."""
    import zlib
    import re

    rec = report.build_record(image, prediction=_prediction(), boxes=BOXES, model_card=make_card("vbreathnet"))
    pdf = report.to_pdf(rec)
    text = b""
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            text += zlib.decompress(m.group(1))
        except zlib.error:
            text += m.group(1)
    assert b"Decision support, not a diagnosis" in text
    assert b"not validated" in text and b"Suggested class" in text


def test_latin1_sanitiser():
    assert report.latin1("a — b ≥ c → d “e”") == 'a - b >= c -> d "e"'
    assert report.latin1("中") == "?"
