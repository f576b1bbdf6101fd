"""Diagnose: upload -> quality -> prediction -> heatmap / boxes / lung layers -> report download.

Uploaded files are only ever held in memory (bytes from the uploader, results in this
session's state); nothing is written to disk or logged.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxr_core import dashboard, detection, pipeline, settings
from cxr_core.classify import explain
from cxr_core.export.backend import heatmap_note
from cxr_core.models import read_card
from pages import _panels as panels
from pages import _viewer as film_viewer
from pages._common import classifier_status, ensure_navigation, get_classifier, get_detector, get_segmenter
from pages._session import (
    GENERIC_ERROR,
    REVIEWED_STORE,
    age_index,
    age_key,
    age_options,
    age_store,
    analysed,
    attempt,
    decoded,
    digest_of,
    friendly,
    overview_row,
    remember_age,
    with_correction,
)

ensure_navigation()


def main() -> None:
    """The whole page; any unexpected error ends in a short message, never a traceback."""

    st.title("Diagnose a chest X-ray")
    st.caption(
        "Upload a frontal chest radiograph (PNG, JPEG or DICOM). The app checks image quality, suggests "
        "COVID-19 / Normal / Viral pneumonia with a calibrated confidence, and shows where the model looked."
    )

    trained_names, display_names = classifier_status()

    with st.sidebar:
        model_name, show_ids = panels.model_sidebar(trained_names, display_names)
        backend = panels.backend_sidebar(model_name) if model_name in trained_names else "torch"

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
        reviewed = st.session_state.setdefault(REVIEWED_STORE, {})
        with st.expander(f":material/list: Worklist overview ({len(uploads)} files)", expanded=False):
            clf_for_list = None
            if model_name in trained_names:
                try:
                    clf_for_list = get_classifier(model_name, backend)
                except Exception:  # the single-image view below says why
                    clf_for_list = None
            rows = [{"Reviewed": "yes" if reviewed.get(digest_of(u)) else ""}
                    | overview_row(u, model_name, clf_for_list, show_ids) for u in uploads]
            st.dataframe(rows, hide_index=True, key="dx_overview", column_config={
                "Notes": st.column_config.TextColumn("Notes", width="large"),
                "Leaning (not an answer)": st.column_config.TextColumn(
                    "Leaning (not an answer)", width="medium",
                    help="Where the model abstained: the class it leaned to. Not a suggestion."),
            })
            st.download_button("Worklist (CSV, all rows)", dashboard.worklist_csv(rows), file_name="worklist.csv",
                               mime="text/csv", icon=":material/table_view:", key="dx_worklist_csv",
                               on_click="ignore")
            st.caption("Each file with its quality verdict and suggestion (or abstention) from the model in the "
                       "sidebar; click a column header to sort. Decision support, not a diagnosis: open each "
                       "file below before acting on it.")
        labels = [f"{i + 1}. {dashboard.md_escape(u.name)}" for i, u in enumerate(uploads)]
        choice = st.radio("Worklist", labels, horizontal=True, key="dx_worklist")
        current = uploads[labels.index(choice) if choice in labels else 0]
    else:
        current = uploads[0]

    digest = digest_of(current)
    d_status, image = decoded(current, show_ids)
    if d_status != "ok":
        st.error(f"**{dashboard.md_escape(current.name)}** could not be used: {dashboard.md_escape(image)}",
                 icon=":material/error:")
        st.stop()

    # --- patient age group (per image: a worklist may hold several patients) --------------------------------
    from_header = image.meta.age_group
    ages = age_options(from_header)
    with st.sidebar:
        st.subheader("Patient")
        age_label = st.selectbox(
            "Age group", list(ages), index=age_index(digest, from_header),
            key=age_key(digest), on_change=remember_age, args=(digest, from_header),
            help="The model learned COVID-19 only from adults and viral pneumonia only from children aged 1-5. "
            "With the age group known it abstains from a call outside that, instead of extrapolating.",
        )
    age_group = ages.get(age_label, from_header)
    age_store()[digest] = age_group  # kept while another worklist film is open (its widget is not drawn)

    # --- one analysis per upload, model and age group (cxr_core.pipeline) -------------------------------------
    clf, pred_error = None, None
    if model_name in trained_names:
        try:  # get_classifier is cached per process; a model trained later gets a new object (and key)
            clf = get_classifier(model_name, backend)
        except Exception as exc:
            pred_error = friendly(exc)
    a_status, analysis = analysed(current, image, clf, model_name, age_group, show_ids)
    if a_status != "ok" and clf is not None:  # show the image and its quality without the failed model
        pred_error = analysis
        a_status, analysis = analysed(current, image, None, model_name, age_group, show_ids)
    if a_status != "ok":
        st.error(analysis, icon=":material/error:")
        st.stop()
    analysis, fix_error = with_correction(current, analysis, model_name, clf, age_group, show_ids)
    image, quality, prediction = analysis.image, analysis.quality, analysis.prediction
    card = analysis.card()
    if card is None:
        try:
            card = read_card(model_name)
        except Exception:  # a missing or unreadable card only hides the limits box
            card = None

    # --- layout ---------------------------------------------------------------------------------------------
    left, right = st.columns([3, 2], gap="large")

    with right:
        panels.quality_panel(quality)
        panels.orientation_offer(analysis, digest)
        if fix_error:
            st.warning(f"The film could not be corrected: {fix_error}", icon=":material/warning:")
        panels.result_panel(prediction, pred_error, card, trained_names, display_names)

    with left:
        st.subheader(dashboard.md_escape(current.name))
        banner = dashboard.patient_banner(image.meta, show_ids)
        if banner:
            with st.container(border=True):
                st.markdown(" · ".join(f"{k}: **{dashboard.md_escape(v)}**" for k, v in banner.items()))
        meta_items = dashboard.clinical_metadata(image.meta, include_identifiers=show_ids)
        st.caption(" · ".join(f"{k}: **{dashboard.md_escape(v)}**" for k, v in meta_items.items() if k in {"View", "Modality", "Pixel spacing", "Size (w x h)", "Format"}))

        brightness, contrast, inverted, interactive = film_viewer.controls(image.pixels, image.meta)

        l1, l2, l3 = st.columns([1, 1.3, 1.1])
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

        viewer = st.container()  # the film sits right under the toggles; layer options follow below it
        gray = dashboard.window_level(image.pixels, brightness, contrast)
        base = dashboard.to_rgb(dashboard.invert(gray) if inverted else gray)
        composite = base
        heat_method = heat_value = None

        # Heatmap layer.
        if show_heat and prediction is not None:
            method_by_label = {label: m for m, (_, label) in explain.METHODS.items()}
            h1, h2, h3 = st.columns(3)
            chosen_method = h1.selectbox("CAM method", list(method_by_label), key="dx_cam_method",
                                         index=list(explain.METHODS).index(explain.DEFAULT_METHOD))
            heat_method = method_by_label.get(chosen_method, explain.DEFAULT_METHOD)
            alpha = h2.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="dx_alpha")
            classes = list(prediction.probabilities)  # the classifier's own classes, in its output order
            class_by_label = {dashboard.class_label(c): c for c in classes}
            agnostic = heat_method in explain.CLASS_AGNOSTIC
            target_label = h3.selectbox("Explain class", list(class_by_label),
                                        index=classes.index(prediction.predicted),
                                        key="dx_cam_target", disabled=agnostic,
                                        help="The class whose score the heatmap explains.")
            if agnostic:
                h3.caption(f"{chosen_method} is class-agnostic: its map is the same for every class, so there "
                           "is no class to choose.")
            target = prediction.predicted if agnostic else class_by_label.get(target_label, prediction.predicted)
            lungs_only = lungs_ready and st.checkbox(
                "Only inside the lungs", value=False, key="dx_heat_lungs",
                help="Hide heatmap activity outside the segmented lung fields.")
            if lungs_only and attempt(lambda: analysis.lungs(segmenter=get_segmenter()))[0] != "ok":
                lungs_only = False  # the lung layer below says why
            h_status, h_value = attempt(lambda: analysis.heatmap(target, heat_method, lungs_only=lungs_only))
            if h_status == "ok":
                heat_value = h_value
                composite = explain.overlay(composite, h_value.map, alpha, fade=True)
                st.caption(dashboard.heatmap_caption(h_value) + " " + (heatmap_note(clf) or ""))
                level, text = dashboard.sanity_note(explain.sanity_result(prediction.model, heat_method),
                                                    heat_method, prediction.model)
                if level == "warning":
                    st.warning(text, icon=":material/warning:")
                elif level == "info":
                    st.info(text, icon=":material/help:")
                else:
                    st.caption(text)
            else:
                st.warning(f"Heatmap unavailable: {h_value}", icon=":material/warning:")
                heat_method = None

        # Lung outline layer.
        if show_lungs:
            s_status, s_value = attempt(lambda: analysis.lungs(segmenter=get_segmenter()))
            if s_status == "ok":
                composite = dashboard.draw_outline(composite, s_value.mask)
            else:
                st.warning(f"Lung outline unavailable: {s_value}", icon=":material/warning:")

        # Detector layer.
        shown_boxes = det_card = det_label = det_conf = None
        if show_boxes:
            det_card, det_label = pipeline.detector_identity()
            b1, b2 = st.columns([1, 2])
            det_conf = b1.slider("Box confidence threshold", settings.DETECTOR_MIN_CONF, 0.95,
                                 round(pipeline.detector_threshold(det_card), 2), 0.01, key="dx_box_conf",
                                 help="Default: the detector card's operating point (see the Detector page).")
            get_detector()  # loaded once per process (with a spinner); the analysis then reuses it
            d_status, d_value = attempt(lambda: analysis.boxes(conf=settings.DETECTOR_MIN_CONF))
            if d_status == "ok":
                found = sorted({b.label for b in d_value})
                classes = b2.multiselect("Findings to show", found, default=found, key=f"dx_box_cls_{digest[:8]}")
                shown_boxes = analysis.boxes(conf=det_conf, classes=classes)
                composite = detection.draw_boxes(composite, shown_boxes, scale=dashboard.box_scale(image))
            else:
                st.warning(f"Abnormality detector unavailable: {d_value}", icon=":material/warning:")
        notes = analysis.notes(shown_boxes)

        with viewer:
            film_viewer.show_film(base, composite, interactive, image.meta.pixel_spacing, meta=image.meta)
            if heat_value is not None:
                st.plotly_chart(dashboard.heatmap_legend_figure(heat_value.method_label,
                                                                None if agnostic else heat_value.target_label),
                                key="dx_heat_legend", config={"displayModeBar": False, "staticPlot": True})

        if shown_boxes is not None:
            panels.boxes_panel(shown_boxes, det_label, det_card)
        for n in notes:
            st.warning(n, icon=":material/warning:")

        st.checkbox("Reviewed", value=bool(st.session_state.setdefault(REVIEWED_STORE, {}).get(digest)),
                    key=f"dx_reviewed_{digest[:16]}", on_change=film_viewer.remember_reviewed, args=(digest,),
                    help="Your own mark for the worklist (this session only).")

        with st.expander(":material/description: Image details"):
            st.table({"Field": list(meta_items), "Value": list(meta_items.values())})
            if not show_ids:
                st.caption("Patient identifiers are hidden. Tick *Show patient identifiers* in the sidebar to see them.")

    # --- downloads ---------------------------------------------------------------------------------------------
    with right:
        panels.report_panel(analysis, current.name, base, composite, shown_boxes, det_conf, heat_method, notes)
        if image.meta.format == "DICOM":
            panels.dicom_panel(analysis, current.getvalue(), digest, composite, shown_boxes, det_conf, heat_method)

try:
    main()
except Exception:  # st.stop / st.rerun are BaseExceptions and pass through
    st.error(GENERIC_ERROR, icon=":material/error:")
