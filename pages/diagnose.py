"""Diagnose: upload -> quality -> prediction -> heatmap / boxes / lung layers -> report download.

Uploaded files are only ever held in memory (bytes from the uploader, results in this
session's state); nothing is written to disk or logged.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import streamlit as st

from cxr_core import classify, dashboard, detection, explain, lungs, report, settings
from cxr_core.models import read_card
from cxr_core.quality import assess as assess_quality
from pages._common import (
    classifier_status,
    ensure_navigation,
    get_classifier,
    get_detector,
    get_segmenter,
    limits_box,
)

ensure_navigation()

MAX_CACHED = 24  # results kept per session (a small worklist), oldest dropped first
MAX_ROWS = 64  # worklist overview lines kept per session (a few strings each)
GENERIC_ERROR = "Something went wrong while analysing this image. The result is not shown; try again or use another file."


# --- per-session result cache (memory only) ---------------------------------------------------------


def _store() -> OrderedDict:
    if "dx_cache" not in st.session_state:
        st.session_state["dx_cache"] = OrderedDict()
    return st.session_state["dx_cache"]


def cached(key: tuple, compute) -> Any:
    """Memoise per session: results are stored as ('ok', value) or ('error', message)."""
    store = _store()
    if key in store:
        store.move_to_end(key)
        return store[key]
    try:
        value = ("ok", compute())
    except Exception as exc:  # shown as a message, never as a traceback
        value = ("error", _friendly(exc))
    store[key] = value
    while len(store) > MAX_CACHED:
        store.popitem(last=False)
    return value


def _friendly(exc: Exception) -> str:
    name = type(exc).__name__
    if name in {"ModelUnavailableError", "ImageLoadError", "FileNotFoundError"}:
        return str(exc)
    return GENERIC_ERROR


def age_options(from_header: str | None) -> dict[str, str | None]:
    """Age-group choices; with a DICOM age the header's band is the default and "Not given" is not offered."""
    options: dict[str, str | None] = {} if from_header else {"Not given": None}
    return options | {settings.AGE_GROUP_LABELS[g] + (" (DICOM header)" if g == from_header else ""): g
                      for g in settings.AGE_GROUPS}


def age_key(digest: str) -> str:
    return f"dx_age_{digest[:16]}"


def overview_row(upload: Any, model_name: str, clf: Any) -> dict[str, str]:
    """Decode, check and classify one worklist file, memoised per file, model and age choice."""
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    chosen = st.session_state.get(age_key(digest))
    rows = st.session_state.setdefault("dx_rows", OrderedDict())
    key = (digest, model_name, chosen)
    if key not in rows:
        # same cache keys as the single-image view below, so neither computes what the other did
        image, error = dashboard.safe_load(data, upload.name)
        row = dashboard.worklist_row(upload.name, error=error) if error else None
        if row is None:
            age = age_options(image.meta.age_group).get(chosen, image.meta.age_group)
            q_status, quality = cached(("quality", digest), lambda: assess_quality(image))
            p_status, pred = ("ok", None) if clf is None or q_status != "ok" else cached(
                ("predict", digest, model_name, age),
                lambda: classify.predict(image, clf, quality=quality, age_group=age))
            row = (dashboard.worklist_row(upload.name, quality, pred) if q_status == p_status == "ok"
                   else dashboard.worklist_row(upload.name, error=quality if q_status != "ok" else pred))
        rows[key] = row
        while len(rows) > MAX_ROWS:
            rows.popitem(last=False)
    return rows[key] | {"File": upload.name}


# --- page --------------------------------------------------------------------------------------------


def main() -> None:
    """The whole page; any unexpected error ends in a short message, never a traceback."""

    st.title("Diagnose a chest X-ray")
    st.caption(
        "Upload a frontal chest radiograph (PNG, JPEG or DICOM). The app checks image quality, suggests "
        "COVID-19 / Normal / Viral pneumonia with a calibrated confidence, and shows where the model looked."
    )

    trained_names, display_names = classifier_status()

    with st.sidebar:
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

    if not trained_names:
        st.warning(
            "**No trained model is available yet.** You can still upload an image to view it and check its "
            "quality, but no classification will be shown. Train one with "
            "`python -m cxr_core.train --model vbreathnet`.",
            icon=":material/model_training:",
        )
    elif model_name not in trained_names:
        st.info(
            f"{display_names.get(model_name, model_name)} is not trained yet, so it cannot classify. "
            f"Choose one of: {', '.join(display_names[n] for n in trained_names)}.",
            icon=":material/info:",
        )

    uploads = st.file_uploader(
        "Chest X-ray image(s)",
        # No `type=` filter on purpose: DICOM files often have no extension. load_image sniffs the
        # content and refuses anything it cannot read with a specific message (see settings.UPLOAD_TYPES).
        accept_multiple_files=True,
        key="dx_upload",
        help=f"PNG, JPEG, BMP, TIFF or DICOM (also without a file extension), up to "
        f"{settings.MAX_FILE_BYTES // 2**20} MB each. Several files form a worklist.",
    ) or []

    if not uploads:
        st.info("Upload an image to start. Several files can be uploaded at once and reviewed one by one.",
                icon=":material/upload_file:")
        st.stop()

    # Worklist: several files -> an overview, then pick one.
    if len(uploads) > 1:
        with st.expander(f":material/list: Worklist overview ({len(uploads)} files)", expanded=False):
            clf_for_list = None
            if model_name in trained_names:
                try:
                    clf_for_list = get_classifier(model_name)
                except Exception:  # the single-image view below says why
                    clf_for_list = None
            st.dataframe([overview_row(u, model_name, clf_for_list) for u in uploads], hide_index=True,
                         key="dx_overview")
            st.caption("Each file with its quality verdict and suggestion (or abstention) from the model in the "
                       "sidebar. Decision support, not a diagnosis: open each file below before acting on it.")
        labels = [f"{i + 1}. {dashboard.md_escape(u.name)}" for i, u in enumerate(uploads)]
        choice = st.radio("Worklist", labels, horizontal=True, key="dx_worklist")
        current = uploads[labels.index(choice) if choice in labels else 0]
    else:
        current = uploads[0]

    data = current.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    image, load_error = dashboard.safe_load(data, current.name, include_identifiers=show_ids)
    if load_error:
        st.error(f"**{dashboard.md_escape(current.name)}** could not be used: {dashboard.md_escape(load_error)}",
                     icon=":material/error:")
        st.stop()

    # --- patient age group (per image: a worklist may hold several patients) --------------------------------
    from_header = image.meta.age_group
    ages = age_options(from_header)
    with st.sidebar:
        st.subheader("Patient")
        age_label = st.selectbox(
            "Age group", list(ages), index=list(ages.values()).index(from_header),
            key=age_key(digest),
            help="The model learned COVID-19 only from adults and viral pneumonia only from children aged 1-5. "
            "With the age group known it abstains from a call outside that, instead of extrapolating.",
        )
    age_group = ages.get(age_label, from_header)

    # --- quality -------------------------------------------------------------------------------------------
    quality = None
    q_status, q_value = cached(("quality", digest), lambda: assess_quality(image))
    if q_status == "ok":
        quality = q_value
    quality_msg = None if q_status == "ok" else q_value

    # --- prediction ----------------------------------------------------------------------------------------
    prediction = None
    pred_error = None
    clf = None
    card: dict | None = None
    if model_name in trained_names:
        try:  # not memoised in the session: a model trained later must be picked up
            c_status, c_value = "ok", get_classifier(model_name)
        except Exception as exc:
            c_status, c_value = "error", _friendly(exc)
        if c_status == "ok":
            clf = c_value
            card = getattr(clf, "card", None) or None
            p_status, p_value = cached(("predict", digest, model_name, age_group),
                                       lambda: classify.predict(image, clf, quality=quality, age_group=age_group))
            if p_status == "ok":
                prediction = p_value
            else:
                pred_error = p_value
        else:
            pred_error = c_value
    if card is None:
        try:
            card = read_card(model_name)
        except Exception:  # a missing or unreadable card only hides the limits box
            card = None

    # --- layout ---------------------------------------------------------------------------------------------
    left, right = st.columns([3, 2], gap="large")

    with right:
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
            st.info(quality_msg or "Quality check unavailable.", icon=":material/info:")

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
                if prediction.predicted == "normal":
                    st.caption(dashboard.NORMAL_SCOPE_NOTE)
                elif prediction.age_group is None:
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

    with left:
        st.subheader(dashboard.md_escape(current.name))
        meta_items = dashboard.clinical_metadata(image.meta, include_identifiers=show_ids)
        st.caption(" · ".join(f"{k}: **{dashboard.md_escape(v)}**" for k, v in meta_items.items() if k in {"View", "Modality", "Pixel spacing", "Size (w x h)", "Format"}))

        with st.expander(":material/tune: Viewer: window / level and zoom", expanded=False):
            v1, v2, v3 = st.columns(3)
            brightness = v1.slider("Brightness (level)", -0.5, 0.5, 0.0, 0.01, key="dx_brightness")
            contrast = v2.slider("Contrast (window)", 0.5, 4.0, 1.0, 0.05, key="dx_contrast")
            zoom = v3.slider("Zoom", 1.0, 4.0, 1.0, 0.25, key="dx_zoom")
            if zoom > 1.0:
                p1, p2 = st.columns(2)
                cx = p1.slider("Pan left-right", 0.0, 1.0, 0.5, 0.01, key="dx_cx")
                cy = p2.slider("Pan up-down", 0.0, 1.0, 0.5, 0.01, key="dx_cy")
            else:
                cx = cy = 0.5

        l1, l2, l3 = st.columns(3)
        show_heat = l1.toggle("Heatmap", value=False, key="dx_heat", disabled=prediction is None,
                              help="Where the model looked (class activation map).")
        detector_ready = Path(settings.DETECTOR_WEIGHTS).is_file()
        lungs_ready = Path(settings.LUNGSEG_WEIGHTS).is_file()
        show_boxes = l2.toggle("Abnormality boxes", value=False, key="dx_boxes", disabled=not detector_ready,
                               help="Research-preview detector for 14 VinBigData findings and tuberculosis."
                               if detector_ready else "The abnormality detector is not trained yet.")
        show_lungs = l3.toggle("Lung outline", value=False, key="dx_lungs", disabled=not lungs_ready,
                               help="Outline of the lung fields from the U-Net segmenter."
                               if lungs_ready else "The lung segmenter is not trained yet.")

        def _segment():
            return lungs.segment(image, segmenter=get_segmenter())

        base = dashboard.to_rgb(dashboard.window_level(image.pixels, brightness, contrast))
        composite = base
        notes: list[str] = []
        heat_method = None

        # Heatmap layer.
        if show_heat and prediction is not None:
            method_by_label = {label: m for m, (_, label) in explain.METHODS.items()}
            h1, h2, h3 = st.columns(3)
            chosen_method = h1.selectbox("CAM method", list(method_by_label), key="dx_cam_method",
                                         index=list(explain.METHODS).index(explain.DEFAULT_METHOD))
            heat_method = method_by_label.get(chosen_method, explain.DEFAULT_METHOD)
            alpha = h2.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="dx_alpha")
            class_by_label = {dashboard.class_label(c): c for c in settings.CLASSES}
            target_label = h3.selectbox("Explain class", list(class_by_label),
                                        index=list(settings.CLASSES).index(prediction.predicted),
                                        key="dx_cam_target")
            target = class_by_label.get(target_label, prediction.predicted)
            lung_mask = None
            if lungs_ready and st.checkbox("Only inside the lungs", value=False, key="dx_heat_lungs",
                                           help="Hide heatmap activity outside the segmented lung fields."):
                m_status, m_value = cached(("lungs", digest), _segment)
                lung_mask = m_value if m_status == "ok" else None
            h_status, h_value = cached(
                ("heatmap", digest, model_name, heat_method, target, lung_mask is not None),
                lambda: explain.explain(clf, image, target=target, method=heat_method, lung_mask=lung_mask),
            )
            if h_status == "ok":
                composite = explain.overlay(composite, h_value.map, alpha, fade=True)
                frac = getattr(h_value, "lung_fraction", None)
                notes_heat = (f"Heatmap ({explain.METHODS[heat_method][1]}) for "
                              f"**{dashboard.class_label(target)}**: warm colours mark the regions that most raised "
                              "this class's score. It shows where the model looked, not where disease is.")
                if frac is not None:
                    notes_heat += f" {frac:.0%} of the highlight lies inside the lungs."
                st.caption(notes_heat)
                sanity = explain.sanity_result(model_name)
                if sanity and not all((sanity.get("passed") or {}).values()):
                    failed = ", ".join(k.replace("_", " ") for k, ok in sanity["passed"].items() if not ok)
                    st.warning(f"This model's heatmaps failed a sanity check ({failed}; "
                               f"{sanity.get('n_images')} test images, {sanity.get('method')}): "
                               "treat them as a rough hint only.", icon=":material/warning:")
            else:
                st.warning(f"Heatmap unavailable: {h_value}", icon=":material/warning:")
                heat_method = None

        # Lung outline layer.
        if show_lungs:
            s_status, s_value = cached(("lungs", digest), _segment)
            if s_status == "ok":
                composite = dashboard.draw_outline(composite, s_value.mask)
                if not getattr(s_value, "plausible", True):
                    notes.append("The lung outline looks implausible; the image may not be a frontal chest X-ray.")
            else:
                st.warning(f"Lung outline unavailable: {s_value}", icon=":material/warning:")

        # Detector layer.
        shown_boxes = None
        det_card = None
        det_label = None
        det_conf = None
        if show_boxes:
            det_files = dashboard.load_detector_files()
            det_card = det_files["card"]
            det_label = dashboard.detector_label(det_card, det_files["figures"])
            b1, b2 = st.columns([1, 2])
            default_conf = float((det_card or {}).get("operating_threshold", settings.DETECTOR_CONF))
            det_conf = b1.slider("Box confidence threshold", settings.DETECTOR_MIN_CONF, 0.95, round(default_conf, 2), 0.01,
                                 key="dx_box_conf",
                                 help="Default: the threshold with the best F1 on the detector's validation split.")

            def _detect():
                get_detector()  # loaded once per process; detect() then reuses it
                return detection.detect(image, conf=settings.DETECTOR_MIN_CONF)

            d_status, d_value = cached(("boxes", digest), _detect)
            if d_status == "ok":
                found = sorted({b.label for b in d_value})
                classes = b2.multiselect("Findings to show", found, default=found, key=f"dx_box_cls_{digest[:8]}")
                shown_boxes = dashboard.filter_boxes(d_value, det_conf, classes)
                scale = dashboard.box_scale(image)
                composite = detection.draw_boxes(composite, shown_boxes, scale=scale)
            else:
                st.warning(f"Abnormality detector unavailable: {d_value}", icon=":material/warning:")

        st.image(dashboard.zoom(composite, zoom, cx, cy), width="stretch",
                 caption="Display only: window/level and zoom do not change what the model sees.")

        if shown_boxes is not None:
            st.markdown(f"**Abnormality boxes** — {det_label}")
            if shown_boxes:
                st.dataframe(dashboard.boxes_table(shown_boxes), hide_index=True)
                if any(not getattr(b, "validated", False) for b in shown_boxes):
                    st.caption("Boxes marked *not validated* (a \\* after the label on the image) belong to classes "
                               "with too few test examples to measure accuracy. Treat them as hints only.")
            else:
                st.caption("No box above the threshold.")
            conflict = dashboard.box_conflict(prediction, shown_boxes)
            if conflict:
                notes.append(conflict)  # shown below and carried into the report
            limits_box({"known_limits": dashboard.detector_limits(det_card)}, "Known limits of the detector")
        for n in notes:
            st.warning(n, icon=":material/warning:")

        with st.expander(":material/description: Image details"):
            st.table({"Field": list(meta_items), "Value": list(meta_items.values())})
            if not show_ids:
                st.caption("Patient identifiers are hidden. Tick *Show patient identifiers* in the sidebar to see them.")

    # --- downloads ---------------------------------------------------------------------------------------------
    with right:
        st.subheader("Report")
        try:
            record = report.build_record(
                image, quality=quality, prediction=prediction, boxes=shown_boxes, model_card=card,
                detector_card=det_card, detector_label=det_label, detector_conf=det_conf,
                heatmap_method=heat_method, include_identifiers=show_ids, notes=notes,
            )
            stem = current.name.rsplit(".", 1)[0] or "cxr"
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


try:
    main()
except Exception:  # st.stop / st.rerun are BaseExceptions and pass through
    st.error(GENERIC_ERROR, icon=":material/error:")
