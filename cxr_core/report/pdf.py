"""The one-to-two page PDF of one analysed image, rendered from its JSON record (`report.record`).

fpdf2's built-in core fonts only (no font files are downloaded or bundled), so text is mapped to
Latin-1 (`latin1`). Everything happens in memory: nothing uploaded is written to disk.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cxr_core import settings
from cxr_core.report.record import TITLE


_REPLACE = {
    "\u2014": "-", "\u2013": "-", "\u2012": "-", "\u2212": "-", "\u2018": "'", "\u2019": "'",
    "\u201c": '"', "\u201d": '"', "\u2026": "...", "\u2265": ">=", "\u2264": "<=", "\u00a0": " ",
    "\u2192": "->", "\u2022": "-", "\u00d7": "x", "\u2248": "~",
}


def latin1(text: Any) -> str:
    """Core PDF fonts cover Latin-1 only: map common typography, replace the rest with '?'."""
    s = str(text)
    for k, v in _REPLACE.items():
        s = s.replace(k, v)
    return s.encode("latin-1", "replace").decode("latin-1")


def _pil(rgb: np.ndarray):
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _fmt_pct(x: Any) -> str:
    try:
        return f"{float(x):.1%}"
    except (TypeError, ValueError):
        return "n/a"


def to_pdf(
    record: Mapping[str, Any],
    image_rgb: np.ndarray | None = None,
    overlay_rgb: np.ndarray | None = None,
    overlay_caption: str = "With overlays",
) -> bytes:
    """Render a record (from `build_record`) and up to two images into PDF bytes."""
    from fpdf import FPDF

    disclaimer = latin1(record.get("disclaimer") or settings.DISCLAIMER)

    class _PDF(FPDF):
        def footer(self) -> None:  # the disclaimer on every page
            self.set_y(-16)
            self.set_font("Helvetica", "I", 7.5)
            self.set_text_color(90, 90, 90)
            self.multi_cell(0, 3.5, disclaimer + f"   Page {self.page_no()}", align="C")

    pdf = _PDF(format="A4", unit="mm")
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.set_margins(15, 15, 15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(text: str) -> None:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 11.5)
        pdf.set_text_color(31, 95, 139)
        pdf.cell(0, 7, latin1(text), new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(28, 43, 54)
        pdf.set_font("Helvetica", "", 9.5)

    def line(text: str, bold: bool = False) -> None:
        pdf.set_font("Helvetica", "B" if bold else "", 9.5)
        pdf.multi_cell(0, 5, latin1(text), new_x="LMARGIN", new_y="NEXT")

    def kv(key: str, value: Any) -> None:
        pdf.set_font("Helvetica", "B", 9.5)
        pdf.cell(48, 5, latin1(key))
        pdf.set_font("Helvetica", "", 9.5)
        pdf.multi_cell(0, 5, latin1("n/a" if value in (None, "") else value), new_x="LMARGIN", new_y="NEXT")

    # Title and the headline disclaimer.
    pdf.set_font("Helvetica", "B", 16)
    pdf.set_text_color(28, 43, 54)
    pdf.cell(0, 9, latin1(TITLE), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8.5)
    pdf.set_text_color(90, 90, 90)
    pdf.cell(0, 5, latin1(f"Generated {record.get('generated_at', '')} (UTC)"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_fill_color(255, 244, 214)
    pdf.set_text_color(110, 70, 0)
    pdf.set_font("Helvetica", "B", 9.5)
    pdf.multi_cell(0, 5.5, disclaimer, fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(28, 43, 54)

    # Images side by side.
    images = [(im, cap) for im, cap in ((image_rgb, "Image as displayed"), (overlay_rgb, overlay_caption))
              if im is not None]
    if images:
        pdf.ln(3)
        gap = 6
        cell_w = (width - gap * (len(images) - 1)) / len(images) if len(images) > 1 else min(width, 110)
        max_h = 80
        top = pdf.get_y()
        bottom = top
        for i, (im, cap) in enumerate(images):
            h_px, w_px = np.asarray(im).shape[:2]
            w_mm = min(cell_w, max_h * w_px / h_px)
            h_mm = w_mm * h_px / w_px
            x = pdf.l_margin + i * (cell_w + gap) + (cell_w - w_mm) / 2
            pdf.image(_pil(im), x=x, y=top, w=w_mm, h=h_mm)
            pdf.set_xy(pdf.l_margin + i * (cell_w + gap), top + h_mm + 1)
            pdf.set_font("Helvetica", "I", 8)
            pdf.cell(cell_w, 4, latin1(cap), align="C")
            bottom = max(bottom, top + h_mm + 6)
        pdf.set_xy(pdf.l_margin, bottom)

    # Image details.
    img = record.get("image") or {}
    heading("Image")
    kv("File", img.get("filename"))
    kv("Format", img.get("format"))
    if img.get("original_size"):
        kv("Size (w x h)", "{} x {} px".format(*img["original_size"]))
    kv("Modality / view", f"{img.get('modality') or 'not stated'} / {img.get('view_position') or 'not stated'}")
    if img.get("pixel_spacing_mm"):
        kv("Pixel spacing", "{:.3f} x {:.3f} mm".format(*img["pixel_spacing_mm"]))
    for k, v in (img.get("identifiers") or {}).items():
        kv(k, v)

    # Quality.
    q = record.get("quality")
    heading("Image quality")
    if q:
        kv("Verdict", str(q.get("verdict", "n/a")).upper())
        for r in q.get("reasons") or []:
            line(f"- {r}")
    else:
        line("Quality check not available.")

    # Classification.
    heading("Classification")
    pred = record.get("prediction")
    if pred:
        probs = pred.get("probabilities") or {}
        clf = record.get("classifier") or {}
        kv("Model", clf.get("display_name") or pred.get("model"))
        kv("Patient age group", settings.AGE_GROUP_LABELS.get(pred.get("age_group") or "", "not given"))
        if pred.get("abstained"):
            line("No class suggested (the model abstained):", bold=True)
            for r in pred.get("reasons") or []:
                line(f"- {r}")
        else:
            kv("Suggested class", pred.get("predicted_label", pred.get("predicted")))
            kv("Calibrated confidence", _fmt_pct(pred.get("confidence")))
        pdf.ln(1)
        bar_w = width - 48 - 22
        for cls in settings.ordered_classes(probs):  # the classifier's classes, cxr3's in their usual order
            p = float(probs[cls])
            y = pdf.get_y()
            pdf.set_font("Helvetica", "", 9.5)
            pdf.cell(48, 5.5, latin1(settings.class_label(cls)))
            pdf.set_fill_color(230, 235, 239)
            pdf.rect(pdf.l_margin + 48, y + 1, bar_w, 3.5, style="F")
            if cls == pred.get("predicted") and not pred.get("abstained"):
                pdf.set_fill_color(31, 95, 139)
            else:
                pdf.set_fill_color(150, 165, 175)
            pdf.rect(pdf.l_margin + 48, y + 1, max(0.3, bar_w * p), 3.5, style="F")
            pdf.set_xy(pdf.l_margin + 48 + bar_w + 2, y)
            pdf.cell(20, 5.5, f"{p:.1%}", new_x="LMARGIN", new_y="NEXT")
        ex = record.get("explanation")
        if ex and ex.get("method"):
            kv("Heatmap method", ex["method"])
    else:
        line("No classification (no trained model was available or the image could not be classified).")

    # Findings.
    findings = record.get("findings")
    if findings is not None:
        heading("Abnormality boxes (research preview)")
        det = findings.get("detector") or {}
        line(f"Detector: {det.get('label') or 'research preview'}; confidence threshold "
             f"{findings.get('confidence_threshold')}")
        boxes = findings.get("boxes") or []
        if not boxes:
            line("No box above the threshold.")
        for b in boxes:
            x0, y0, x1, y1 = b["box_xyxy"]
            flag = "" if b.get("validated") else "  [not validated]"
            line(f"- {b['label']}: {b['confidence']:.2f} at ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f}){flag}")

    # Limits and versions.
    limits = record.get("known_limits") or []
    heading("Known limits of this model")
    if limits:
        for lim in limits:
            line(f"- {lim}")
    else:
        line("See the About page of the application.")
    clf = record.get("classifier")
    if clf:
        heading("Model versions")
        kv("Classifier", f"{clf.get('display_name')} ({clf.get('name')})")
        kv("Trained on", clf.get("date"))
        kv("Code version", clf.get("code_version"))
        kv("Data manifest", (clf.get("data_manifest_sha256") or "n/a")[:16])
        kv("Temperature / threshold", f"{clf.get('temperature')} / {clf.get('abstain_threshold')}")
    if findings is not None:
        det = findings.get("detector") or {}
        kv("Detector", f"trained {det.get('date') or 'n/a'}, code {det.get('code_version') or 'n/a'}")
    for n in record.get("notes") or []:
        line(n)
    out = pdf.output()
    return bytes(out)
