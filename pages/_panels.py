"""Layout pieces of the Diagnose page: sidebar model choice, quality, result, boxes and report panels.

Only widgets and layout: every value shown comes from a `cxr_core.pipeline.Analysis`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import streamlit as st

from cxr_core import dashboard, report, settings
from pages._common import limits_box
from pages._session import cached


def model_sidebar(trained_names: list[str], display_names: dict[str, str]) -> tuple[str, bool]:
    """(chosen classifier name, whether to show patient identifiers)."""
    st.subheader("Model")
    # Widgets take display strings (no format_func): labels map back to model names.
    by_label = {display_names.get(n, n) + ("" if n in trained_names else " (not trained)"): n
                for n in display_names}
    labels = list(by_label)
    default = settings.DEFAULT_CLASSIFIER if settings.DEFAULT_CLASSIFIER in trained_names else (
        trained_names[0] if trained_names else settings.DEFAULT_CLASSIFIER)
    default_label = next((lab for lab, n in by_label.items() if n == default), labels[0] if labels else None)
    chosen = st.selectbox(
        "Classifier",
        labels,
        index=labels.index(default_label) if default_label in labels else 0,
        key="dx_model",
        help="V-BreathNet is the default. Baselines appear here once their weights are trained.",
    )
    model_name = by_label.get(chosen, settings.DEFAULT_CLASSIFIER)
    show_ids = st.checkbox(
        "Show patient identifiers (DICOM)", value=False, key="dx_show_ids",
        help="Off by default: names, IDs and dates in DICOM headers stay hidden and out of reports.",
    )

    return model_name, show_ids


def backend_sidebar(model_name: str) -> str:
    """The inference backend: PyTorch, or ONNX Runtime fp32 / int8 where an exported file exists."""
    from cxr_core.export.backend import available_backends

    labels = {"torch": "PyTorch (fp32)", "onnx": "ONNX Runtime (fp32)", "onnx-int8": "ONNX Runtime (int8)"}
    options = available_backends(model_name)
    if len(options) == 1:
        return options[0]
    chosen = st.selectbox("Inference backend", [labels[b] for b in options], key="dx_backend",
                          help="Same weights, same pipeline; int8 trades a little agreement for speed "
                               "(docs/export.md). Heatmaps always come from the PyTorch model.")
    return next(b for b in options if labels[b] == chosen)


def quality_panel(quality: Any) -> None:
    st.subheader("Image quality")
    if quality is not None:
        verdict = str(quality.verdict).lower()
        reasons = list(quality.reasons or [])
        text = "; ".join(reasons) if reasons else "No problem found."
        if verdict == "pass":
            st.success(f"**Pass.** {text}", icon=":material/check_circle:")
        elif verdict == "warn":
            st.warning(f"**Check the image.** {text}", icon=":material/warning:")
        else:
            st.error(f"**Not suitable for analysis.** {text}", icon=":material/block:")
    else:
        st.info("Quality check unavailable.", icon=":material/info:")


def orientation_offer(analysis: Any, digest: str) -> None:
    """A film the orientation check found rotated or inverted: offer to turn it and analyse again
    (or, once corrected, to undo that)."""
    from pages._session import set_correction

    if analysis.correction:
        st.info(analysis.correction, icon=":material/screen_rotation:")
        st.button("Undo the correction", key="dx_uncorrect", on_click=set_correction, args=(digest, False),
                  icon=":material/undo:")
        return
    found = getattr(analysis.quality, "orientation", None) or {}
    if found.get("rotation") or found.get("inverted"):
        st.button("Turn the film upright and analyse again", key="dx_correct", on_click=set_correction,
                  args=(digest, True), icon=":material/screen_rotation:", type="primary",
                  help="Undoes the rotation / inversion the check found, then runs the whole analysis on the "
                  "corrected film. The correction is noted on the result and in every report.")


def result_panel(prediction: Any, pred_error: str | None, card: dict | None, trained_names: list[str],
                 display_names: dict[str, str]) -> None:
    st.subheader("Result")

    if prediction is not None:
        name_shown = display_names.get(prediction.model, prediction.model)
        if prediction.abstained:
            st.warning(
                "**No class suggested: the model abstains.** "
                + " ".join(prediction.reasons or ["The result is too uncertain to show."])
                + " Interpret the image clinically.",
                icon=":material/do_not_disturb_on:",
            )
        else:
            # stacked, not side by side: "Viral Pneumonia" does not fit half a column at metric size
            st.metric("Suggested class", prediction.label)
            st.metric("Calibrated confidence", dashboard.format_probability(prediction.confidence))
            cxr3 = settings.is_cxr3(prediction.probabilities)  # the scope notes are about cxr3's classes only
            if cxr3 and prediction.predicted == "normal":
                st.caption(dashboard.NORMAL_SCOPE_NOTE)
            elif cxr3 and prediction.age_group is None:
                st.caption(dashboard.AGE_SCOPE_NOTE)
        st.plotly_chart(
            dashboard.probability_figure(prediction.probabilities, prediction.predicted, prediction.abstained),
            config={"displayModeBar": False}, key="dx_probs",
        )
        st.caption(f"Model: **{name_shown}** · temperature-scaled probabilities · "
                   "**Decision support, not a diagnosis.**")
        limits_box(card)
    elif pred_error:
        st.error(pred_error, icon=":material/error:")
    elif not trained_names:
        st.info("No trained model is available, so no class is suggested.", icon=":material/info:")
    else:
        st.info("Select a trained model in the sidebar to get a suggestion.", icon=":material/info:")


def boxes_panel(shown_boxes: list, det_label: str | None, det_card: dict | None) -> None:
    st.markdown(f"**Abnormality boxes** — {det_label}")
    if shown_boxes:
        st.dataframe(dashboard.boxes_table(shown_boxes), hide_index=True)
        if any(not getattr(b, "validated", False) for b in shown_boxes):
            st.caption("Boxes marked *not validated* (a \\* after the label on the image) belong to classes "
                       "with too few test examples to measure accuracy. Treat them as hints only.")
    else:
        st.caption("No box above the threshold.")
    limits_box({"known_limits": dashboard.detector_limits(det_card)}, "Known limits of the detector")


def report_panel(analysis: Any, filename: str, base: Any, composite: Any, boxes: list | None,
                 det_conf: float | None, heat_method: str | None, notes: list[str]) -> None:
    """PDF and JSON downloads of what the page shows (built from the analysis, in memory only)."""
    st.subheader("Report")
    try:
        record = analysis.record(boxes=boxes, detector_conf=det_conf, heatmap_method=heat_method,
                                 notes=notes)
        stem = filename.rsplit(".", 1)[0] or "cxr"
        d1, d2 = st.columns(2)
        overlay_img = composite if composite is not base else None
        fingerprint = hashlib.sha1(base.tobytes())
        if overlay_img is not None:
            fingerprint.update(overlay_img.tobytes())
        fingerprint.update(report.to_json({k: v for k, v in record.items() if k != "generated_at"}))
        pdf_status, pdf_bytes = cached(("pdf", fingerprint.hexdigest()),
                                       lambda: report.to_pdf(record, base, overlay_img))
        if pdf_status == "ok":
            d1.download_button("PDF report", pdf_bytes, file_name=f"{stem}_report.pdf", mime="application/pdf",
                               icon=":material/picture_as_pdf:", key="dx_pdf", on_click="ignore")
        else:
            d1.warning("The PDF could not be generated.")
        d2.download_button("Results (JSON)", report.to_json(record), file_name=f"{stem}_results.json",
                           mime="application/json", icon=":material/data_object:", key="dx_json",
                           on_click="ignore")
        st.caption("Reports include the disclaimer and model versions. Identifiers are left out unless shown above.")
    except Exception:
        st.warning("Reports are not available right now.", icon=":material/warning:")


def dicom_panel(analysis: Any, upload_bytes: bytes, digest: str, composite: Any, boxes: list | None,
                det_conf: float | None, heat_method: str | None) -> None:
    """DICOM Structured Report and secondary capture of what the page shows, for a DICOM upload.

    Built in memory, once per shown state (memoised in the session), never written to disk. A
    non-DICOM source (ValueError from dicom_outputs) shows nothing.
    """
    from cxr_core.pacs.outputs import dicom_outputs

    fingerprint = hashlib.sha1(np.ascontiguousarray(composite).tobytes())
    fingerprint.update(repr((sorted((b.label, round(float(b.confidence), 4), b.x0, b.y0, b.x1, b.y1)
                                    for b in boxes) if boxes is not None else None,
                             det_conf, heat_method, id(analysis))).encode())
    key = ("dicom", digest, fingerprint.hexdigest())

    def build() -> Any:
        try:
            return dicom_outputs(analysis, upload_bytes, boxes=boxes, detector_conf=det_conf, overlay=composite,
                                 heatmap_method=heat_method)
        except ValueError:
            return None

    status, out = cached(key, build)
    if status != "ok":
        st.warning("The DICOM outputs could not be generated for this file.", icon=":material/warning:")
        return
    if out is None:
        return
    stem = "cxr"
    st.download_button("DICOM SR", out.sr_bytes, file_name=f"{stem}_sr.dcm", mime="application/dicom",
                       icon=":material/summarize:", key="dx_dicom_sr", on_click="ignore")
    st.download_button("DICOM secondary capture", out.sc_bytes, file_name=f"{stem}_sc.dcm",
                       mime="application/dicom", icon=":material/image:", key="dx_dicom_sc", on_click="ignore")
    st.caption("DICOM Structured Report and secondary capture (the image as shown) for filing with the study. "
               "They carry the study's patient identifiers, as DICOM objects of that study must. "
               "Decision support, not a diagnosis.")
