"""Every page of the Streamlit app through streamlit.testing.v1.AppTest (no browser).

Streamlit 1.67's AppTest supports st.file_uploader (`set_value((name, bytes, mime))`), so the
Diagnose page is driven exactly as a user would: upload, read the result, toggle layers.
Model cards and a randomly initialised V-BreathNet checkpoint are written into a tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app_fixtures import (
    chest_png_bytes,
    make_card,
    real_cxr3_image,
    write_cards,
    write_detector_files,
    write_vbreathnet_checkpoint,
)
from conftest import requires_cxr3
from cxr_core import settings

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
TIMEOUT = 60


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """An empty weights dir; detector and segmenter weights absent; caches cleared around the test."""
    import streamlit as st

    from cxr_core import models

    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setattr(settings, "WEIGHTS_DIR", d)
    monkeypatch.setattr(settings, "DETECTOR_WEIGHTS", d / "detector.pt")
    monkeypatch.setattr(settings, "LUNGSEG_WEIGHTS", d / "lungseg.pt")
    models.load_classifier.cache_clear()
    st.cache_resource.clear()
    yield d
    models.load_classifier.cache_clear()
    st.cache_resource.clear()


@pytest.fixture
def trained(weights):
    write_cards(weights, ("vbreathnet",))
    write_vbreathnet_checkpoint(weights)
    return weights


def _app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _texts(at, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def _upload(at, *files):
    at.file_uploader(key="dx_upload").set_value(list(files)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- without any trained model -------------------------------------------------------------------------


def test_every_page_renders_without_models(weights):
    at = _app()
    assert at.title[0].value == "Diagnose a chest X-ray"
    assert "No trained model is available yet" in _texts(at, "warning")
    assert settings.DISCLAIMER in _texts(at, "warning")  # shared sidebar
    assert not at.error
    assert at.selectbox(key="dx_model").options == [
        "V-BreathNet (not trained)", "DenseNet121 (not trained)", "MobileNetV2 (not trained)", "VGG16 (not trained)"]

    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert "No model has been trained yet" in _texts(at, "warning")
    assert len(at.table[0].value) == 4  # the empty comparison table still lists the four models

    at.switch_page("pages/detector.py").run()
    assert not at.exception
    assert "No detector results yet" in _texts(at, "info")

    at.switch_page("pages/about.py").run()
    assert not at.exception
    headers = [h.value for h in at.header]
    assert headers[:5] == ["Intended use", "Known confounds", "Data sources, licences and attribution",
                           "Model cards", "How to retrain"]
    code = _texts(at, "code")
    for cmd in ("python -m cxr_core.train --model", "python -m cxr_core.evaluate",
                "python -m cxr_core.detection train", "python -m cxr_core segment train"):
        assert cmd in code
    assert settings.DISCLAIMER in _texts(at, "markdown")


def test_upload_without_model_shows_image_and_says_so(weights):
    at = _upload(_app(), ("chest.png", chest_png_bytes(256), "image/png"))
    assert at.image, "the uploaded image is shown"
    assert "No trained model is available, so no class is suggested." in _texts(at, "info")
    assert not at.metric
    assert at.toggle(key="dx_heat").disabled


def test_bad_file_shows_specific_error_not_traceback(weights):
    at = _upload(_app(), ("broken.png", b"this is not an image at all", "image/png"))
    errors = _texts(at, "error")
    assert "broken.png" in errors and "could not be used" in errors
    assert "Traceback" not in errors
    assert not at.image
    # a truncated PNG is explained too
    at = _upload(at, ("cut.png", chest_png_bytes(256)[:300], "image/png"))
    assert "cut.png" in _texts(at, "error")


# --- with a (fixture) trained V-BreathNet ----------------------------------------------------------------


def test_upload_png_predicts_and_offers_reports(trained):
    at = _app()
    assert "No trained model" not in _texts(at, "warning")
    assert at.selectbox(key="dx_model").value == "V-BreathNet"
    at = _upload(at, ("chest.png", chest_png_bytes(256), "image/png"))
    labels = {m.label: m.value for m in at.metric}
    assert labels["Suggested class"] in settings.CLASS_LABELS.values()
    assert labels["Calibrated confidence"].endswith("%")
    assert at.get("plotly_chart"), "probability bar chart"
    assert "Decision support, not a diagnosis" in _texts(at, "caption")
    assert "FIXTURE LIMIT" in _texts(at, "markdown")  # the card's known limits next to the result
    downloads = {d.label for d in at.get("download_button")}
    assert downloads == {"PDF report", "Results (JSON)"}
    assert "Image quality" in [s.value for s in at.subheader]

    # heatmap layer on, then window/level change: no exception, image still shown
    at.toggle(key="dx_heat").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="dx_cam_method").value == "Grad-CAM"
    assert not any("Heatmap unavailable" in w for w in _texts(at, "warning").splitlines())
    at.slider(key="dx_alpha").set_value(0.8).run()
    at.slider(key="dx_contrast").set_value(2.0).run()
    assert not at.exception
    assert len(at.image) == 2, "with a layer on: original and overlay side by side"
    assert "Heatmap sanity check: not checked for Grad-CAM" in _texts(at, "info")  # no sanity file here
    assert at.get("plotly_chart")[-1].proto.spec  # the colour scale beside the heatmap
    at.selectbox(key="dx_wl_preset").set_value("Lung (auto, wide)").run()  # 1st-80th percentile of this film
    assert at.slider(key="dx_brightness").value == 0.06 and "C 112 / W 196 (pixel value)" in _texts(at, "caption")
    at.button(key="dx_wl_reset").click().run()
    assert at.slider(key="dx_brightness").value == 0.0 and at.slider(key="dx_contrast").value == 1.0
    assert "centre **0.50**, width **1.00**" in _texts(at, "caption")
    at.checkbox(key="dx_invert").check().run()
    at.toggle(key="dx_interactive").set_value(True).run()
    assert not at.exception
    viewer = next(c for c in at.get("plotly_chart") if "dragmode" in c.proto.spec)
    assert '"With layers"' in viewer.proto.spec and '"scrollZoom": true' in viewer.proto.config.replace(":true", ": true")


def test_eigencam_disables_the_class_choice_and_sanity_names_the_method(trained):
    import json

    (trained / "explain_sanity_vbreathnet.json").write_text(json.dumps(
        {"model": "vbreathnet", "method": "gradcam", "n_images": 30,
         "passed": {"randomisation_low_correlation": True, "deletion_salient_below_random": False}}))
    at = _upload(_app(), ("chest.png", chest_png_bytes(256), "image/png"))
    at.toggle(key="dx_heat").set_value(True).run()
    assert not at.selectbox(key="dx_cam_target").disabled
    warning = _texts(at, "warning")
    assert "Grad-CAM heatmaps of this model failed a sanity check (deletion salient below random" in warning
    at.selectbox(key="dx_cam_method").set_value("Eigen-CAM").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="dx_cam_target").disabled
    assert "Eigen-CAM is class-agnostic" in _texts(at, "caption")
    # the Grad-CAM result is not shown as Eigen-CAM's; Eigen-CAM was never checked
    assert "failed a sanity check" not in _texts(at, "warning")
    assert "not checked for Eigen-CAM" in _texts(at, "info")


def test_abstention_is_explained(trained):
    write_vbreathnet_checkpoint(trained, temperature=50.0)  # flat probabilities -> abstain
    at = _upload(_app(), ("chest.png", chest_png_bytes(256, seed=1), "image/png"))
    warnings = _texts(at, "warning")
    assert "the model abstains" in warnings and "below" in warnings
    assert not [m for m in at.metric if m.label == "Suggested class"]


def test_worklist_of_several_files(trained):
    at = _upload(_app(), ("a.png", chest_png_bytes(256, 0), "image/png"),
                 ("b.png", b"garbage", "image/png"))
    radio = at.radio(key="dx_worklist")
    assert radio.options == ["1. a.png", "2. b.png"]
    assert at.metric
    overview = at.dataframe[0].value
    assert list(overview["File"]) == ["a.png", "b.png"]
    shown = {m.label: m.value for m in at.metric}["Suggested class"]
    assert overview["Result"][0] == shown and overview["Quality"][0] in {"pass", "check"}
    assert overview["Result"][1] == "not analysed" and "not an image" in overview["Notes"][1]
    assert "Worklist (CSV, all rows)" in {d.label for d in at.get("download_button")}
    # an age choice made for the open file reaches its overview line
    predicted = next(c for c, label in settings.CLASS_LABELS.items() if label == shown)
    outside = next(g for g in settings.AGE_GROUPS if g not in settings.TRAINED_AGE_GROUPS[predicted])
    _age_box(at).set_value(settings.AGE_GROUP_LABELS[outside]).run()
    overview = at.dataframe[0].value
    assert overview["Result"][0] == "abstained" and overview["Age group"][0] == settings.AGE_GROUP_LABELS[outside]
    radio.set_value("2. b.png").run()
    assert not at.exception
    assert "b.png" in _texts(at, "error")


def test_age_and_reviewed_mark_are_kept_across_worklist_switches(trained):
    at = _upload(_app(), ("a.png", chest_png_bytes(256, 0), "image/png"),
                 ("b.png", chest_png_bytes(256, 5), "image/png"))
    adult = settings.AGE_GROUP_LABELS["adult"]
    _age_box(at).set_value(adult).run()
    at.checkbox(key=next(c.key for c in at.checkbox if c.label == "Reviewed")).check().run()
    assert at.dataframe[0].value["Reviewed"][0] == "yes"
    at.radio(key="dx_worklist").set_value("2. b.png").run()
    assert _age_box(at).value == "Not given"  # the other film has its own age
    assert next(c for c in at.checkbox if c.label == "Reviewed").value is False
    at.radio(key="dx_worklist").set_value("1. a.png").run()
    assert not at.exception
    assert _age_box(at).value == adult, "the age chosen for a.png is kept after visiting b.png"
    assert next(c for c in at.checkbox if c.label == "Reviewed").value is True
    overview = at.dataframe[0].value
    assert overview["Age group"][0] == adult and overview["Reviewed"][0] == "yes" and overview["Reviewed"][1] == ""
    assert "Leaning (not an answer)" in overview.columns


def test_dicom_upload_offers_sr_and_secondary_capture(trained):
    from conftest import chest_phantom, make_dicom, to_uint16

    dcm = make_dicom(to_uint16(chest_phantom(256), 12), bits_stored=12, PatientSex="F", PatientAge="045Y",
                     StudyDate="20240131")
    at = _upload(_app(), ("study.dcm", dcm, "application/dicom"))
    downloads = {d.label: d for d in at.get("download_button")}
    assert {"PDF report", "Results (JSON)", "DICOM SR", "DICOM secondary capture"} <= set(downloads)
    assert "Patient name:" not in _texts(at, "markdown")  # no banner while identifiers are hidden
    at.checkbox(key="dx_show_ids").check().run()
    banner = _texts(at, "markdown")
    assert "Patient name: **Doe, Jane**" in banner and "Sex: **female**" in banner and "Study date: **2024-01-31**" in banner
    assert "PatientName" not in banner


def test_dicom_metadata_and_identifiers(trained):
    from conftest import chest_phantom, make_dicom, to_uint16

    dcm = make_dicom(to_uint16(chest_phantom(256), 12), bits_stored=12)
    at = _upload(_app(), ("study.dcm", dcm, "application/dicom"))
    captions = _texts(at, "caption")
    assert "View: **PA**" in captions and "Modality: **DX**" in captions and "0.139 x 0.139 mm" in captions
    assert "Doe^Jane" not in str(at.table[0].value)
    at.checkbox(key="dx_show_ids").check().run()
    assert not at.exception
    assert "Doe^Jane" in str(at.table[0].value) and "Patient name" in list(at.table[0].value["Field"])


def _age_box(at):
    return next(b for b in at.selectbox if b.label == "Age group")


def test_age_group_outside_the_training_population_abstains(trained):
    at = _upload(_app(), ("chest.png", chest_png_bytes(256), "image/png"))
    assert _age_box(at).value == "Not given"
    shown = {m.label: m.value for m in at.metric}["Suggested class"]
    predicted = next(c for c, label in settings.CLASS_LABELS.items() if label == shown)
    if predicted != "normal":
        assert "Age group not given" in _texts(at, "caption")
    outside = next(g for g in settings.AGE_GROUPS if g not in settings.TRAINED_AGE_GROUPS[predicted])
    _age_box(at).set_value(settings.AGE_GROUP_LABELS[outside]).run()
    assert not at.exception
    assert not at.metric and "the model abstains" in _texts(at, "warning")
    assert "training data has no" in _texts(at, "warning")
    inside = settings.TRAINED_AGE_GROUPS[predicted][0]
    _age_box(at).set_value(settings.AGE_GROUP_LABELS[inside]).run()
    assert {m.label: m.value for m in at.metric}["Suggested class"] == shown


def test_age_group_is_read_from_the_dicom_header(trained):
    from conftest import chest_phantom, make_dicom, to_uint16

    dcm = make_dicom(to_uint16(chest_phantom(256), 12), bits_stored=12, PatientAge="045Y")
    at = _upload(_app(), ("study.dcm", dcm, "application/dicom"))
    box = _age_box(at)
    assert box.value == "Adult (18 years or older) (DICOM header)" and "Not given" not in box.options
    assert "045Y" not in _texts(at, "markdown") + _texts(at, "caption")  # the age itself stays private


@requires_cxr3
def test_real_cxr3_image(trained):
    name, data = real_cxr3_image()
    at = _upload(_app(), (name, data, "image/jpeg"))
    assert at.image, "the film is shown"
    from cxr_core import pipeline
    from cxr_core.models import load_classifier

    # the page shows exactly what the library's pipeline decides for this file, whichever it is
    expected = pipeline.analyse(data, classifier=load_classifier("vbreathnet"), filename=name).prediction
    metrics = {m.label: m.value for m in at.metric}
    if expected.abstained:
        assert "abstains" in _texts(at, "warning") and "Suggested class" not in metrics
    else:
        assert metrics["Suggested class"] == expected.label and "abstains" not in _texts(at, "warning")
    assert not _texts(at, "error")


def test_not_trained_model_choice_is_explained(trained):
    at = _app()
    at.selectbox(key="dx_model").set_value("VGG16 (not trained)").run()
    assert "VGG16 is not trained yet" in _texts(at, "info")


# --- comparison / detector pages with fixture cards -----------------------------------------------------


def test_compare_page_with_cards(weights):
    write_cards(weights, ("vbreathnet", "densenet121"), faithful={"densenet121": False})
    at = _app()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert "Not trained yet: MobileNetV2, VGG16" in _texts(at, "info")
    assert "CI not computed for this card: rescore with `python -m cxr_core.train --model densenet121 --rescore`" \
        in _texts(at, "info")  # the fixture cards hold no intervals
    table = at.table[0].value
    assert "Paper-reported: test accuracy" in table.columns and "Measured here: test accuracy" in table.columns
    assert list(table["Measured here: test accuracy"][:2]) == ["0.900", "0.880"]  # no CI: the figure alone
    assert list(table["Model"]) == ["V-BreathNet", "DenseNet121", "MobileNetV2", "VGG16"]
    assert "Not faithful to the paper" in _texts(at, "markdown")
    assert "FIXTURE: trained for fewer epochs" in _texts(at, "markdown")
    # per-class, 2 confusion matrices, ROC, training curves, trade-off, 2 reliability diagrams
    assert len(at.get("plotly_chart")) == 1 + 2 + 1 + 1 + 1 + 2
    assert "viral pneumonia images are all paediatric" in _texts(at, "warning")
    at.segmented_control(key="cmp_split").set_value("val").run()
    assert not at.exception
    assert "Measured here: val accuracy" in at.table[0].value.columns
    assert "No heatmap sanity results yet" in _texts(at, "info")


def test_compare_page_shows_the_heatmap_sanity_table(weights):
    import json

    write_cards(weights, ("vbreathnet",))
    (weights / "explain_sanity_vbreathnet.json").write_text(json.dumps({
        "method": "gradcam", "cam_layer": "features.27 (BatchNorm2d)", "n_images": 30,
        "randomisation": {"spearman_mean": -0.05}, "deletion": {"auc_salient_mean": 0.73, "auc_random_mean": 0.66},
        "road": {"auc_salient_mean": 0.5, "auc_random_mean": 0.8},
        "passed": {"randomisation_spearman_below_0.5": True, "deletion_salient_below_random": False,
                   "road_salient_below_random": True}}))
    at = _app()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    tables = [t.value for t in at.table if "ROAD deletion" in t.value.columns]
    assert len(tables) == 1 and list(tables[0]["blur deletion"]) == ["FAIL"] and list(tables[0]["ROAD deletion"]) == ["pass"]
    assert "Rong et al. 2022" in "".join(c.value for c in at.caption)


def test_compare_page_flags_an_ablation_with_another_recipe(weights):
    import json

    write_cards(weights, ("vbreathnet",))
    (weights / "ablations").mkdir()
    variant = make_card("vbreathnet", acc=0.85)
    variant["display_name"] = "V-BreathNet + lung crop"
    (weights / "ablations" / "vbreathnet.json").write_text(json.dumps(variant))
    at = _app()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert "Default by the selection rule: **V-BreathNet**" in _texts(at, "markdown")
    assert "like-for-like" not in _texts(at, "warning")
    variant["training"]["epochs"] = 30
    (weights / "ablations" / "vbreathnet.json").write_text(json.dumps(variant))
    at.run()
    assert "training.epochs: 3 vs 30" in _texts(at, "warning")


def test_detector_page_with_files(weights):
    write_detector_files(weights)
    at = _app()
    at.switch_page("pages/detector.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training images"] == "647"
    assert metrics["mAP@0.4"] == "0.310"
    warning = _texts(at, "warning")
    assert "research preview — trained on 647 images" in warning and "VinBigData: 10 train, 1 val, 1 test" in warning
    assert len(at.get("plotly_chart")) >= 4
    assert "FIXTURE: only a handful" in _texts(at, "markdown")


def test_boxes_and_lung_layers_with_stub_detector(trained, monkeypatch):
    """The detector and segmenter are replaced by stubs (their own tests live with them); the page must
    draw both layers on the same image, list the boxes, flag unvalidated classes and filter by threshold."""
    import dataclasses

    import numpy as np

    from cxr_core import classify, detection
    from cxr_core import segment as lung_task

    boxes = [detection.Box(40.0, 50.0, 120.0, 140.0, 14, "Active tuberculosis", 0.81, True),
             detection.Box(150.0, 60.0, 200.0, 100.0, 0, "Aortic enlargement", 0.30, False)]
    (trained / "detector.pt").write_bytes(b"stub")
    (trained / "lungseg.pt").write_bytes(b"stub")
    write_detector_files(trained)
    monkeypatch.setattr(detection, "load_detector", lambda *a, **k: object())
    monkeypatch.setattr(detection, "detect", lambda image, conf=0.25, classes=None, **k:
                        [b for b in boxes if b.confidence >= conf])

    def fake_segment(image, segmenter=None, **k):
        mask = np.zeros(image.pixels.shape, bool)
        mask[60:200, 30:110] = True
        mask[60:200, 146:226] = True
        return lung_task.mask_from_probability(mask.astype(np.float32))

    monkeypatch.setattr(lung_task, "segment", fake_segment)
    monkeypatch.setattr(lung_task, "load_segmenter", lambda *a, **k: None)
    real_predict = classify.predict  # the fixture model's class is arbitrary: make it say Normal

    def says_normal(image, clf, **k):
        p = real_predict(image, clf, **k)
        return dataclasses.replace(p, predicted="normal", confidence=0.96, abstained=False, reasons=[])

    monkeypatch.setattr(classify, "predict", says_normal)

    at = _upload(_app(), ("chest.png", chest_png_bytes(256), "image/png"))
    assert "does not look for tuberculosis" in _texts(at, "caption")
    at.toggle(key="dx_boxes").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table["Finding"]) == ["Active tuberculosis", "Aortic enlargement"]
    assert list(table["Validated"]) == ["yes", "not validated"]
    conflict = [w for w in _texts(at, "warning").splitlines() if "classifier suggests Normal" in w]
    assert conflict and "Active tuberculosis" in conflict[0] and "Aortic enlargement" not in conflict[0]
    assert "research preview — trained on 647 images" in _texts(at, "markdown")
    assert "not validated" in _texts(at, "caption")
    at.slider(key="dx_box_conf").set_value(0.5).run()
    assert list(at.dataframe[0].value["Finding"]) == ["Active tuberculosis"]
    at.toggle(key="dx_lungs").set_value(True).run()
    at.toggle(key="dx_heat").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [w for w in _texts(at, "warning").splitlines() if "unavailable" in w]
    assert "FIXTURE: only a handful" in _texts(at, "markdown")  # detector limits next to the boxes


def test_malformed_json_files_do_not_crash_pages(weights):
    import json

    (weights / "vbreathnet.json").write_text(json.dumps({"name": "vbreathnet", "metrics": {"test": {
        "accuracy": "n/a", "per_class": [1, 2], "confusion_matrix": "oops", "roc_curve": {"covid": 3},
        "per_group": {"source": {"x": {"n": 1}}}}}, "training": {"history": "none"}, "params": [1]}))
    (weights / "detector.json").write_text(json.dumps({"data": "weird"}))
    (weights / "detector_metrics.json").write_text(json.dumps({"per_class": "bad", "map40": "x"}))
    (weights / "detector_figures.json").write_text(json.dumps({"label_distribution": 5, "box_area": "x",
                                                               "predicted_vs_actual": [1, 2]}))
    at = _app()
    for page in ("pages/compare.py", "pages/detector.py", "pages/about.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])


def test_unexpected_error_shows_generic_message(trained, monkeypatch):
    from cxr_core import dashboard

    def boom(*a, **k):
        raise RuntimeError("internal detail that must not reach the user")

    monkeypatch.setattr(dashboard, "window_level", boom)
    at = _upload(_app(), ("chest.png", chest_png_bytes(256), "image/png"))
    errors = _texts(at, "error")
    assert "Something went wrong" in errors and "internal detail" not in errors


def test_a_rotated_film_is_offered_a_correction_and_analysed_again(trained, monkeypatch):
    """One click turns a film the orientation check found rotated; the result says so; undo restores it."""
    import io as _io

    import numpy as np
    from conftest import chest_phantom, to_uint8
    from PIL import Image

    from cxr_core.gate import orientation, quality

    film = to_uint8(np.rot90(chest_phantom((240, 200)), 1))  # 200 high, 240 wide: turned a quarter

    def fake_check(image):
        pixels = image.pixels if hasattr(image, "pixels") else image
        turned = pixels.shape == film.shape
        return orientation.Orientation(90 if turned else 0, False, False, 0.01 if turned else 0.99, 0.01, 0.01)

    monkeypatch.setattr(orientation, "available", lambda: True)
    monkeypatch.setattr(orientation, "check", fake_check)
    monkeypatch.setattr(quality, "_plausibility", lambda image: None)
    buf = _io.BytesIO()
    Image.fromarray(film).save(buf, "PNG")
    at = _upload(_app(), ("turned.png", buf.getvalue(), "image/png"))
    assert "rotated by 90 degrees (counter-clockwise)" in _texts(at, "error")
    at.button(key="dx_correct").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Corrected before analysis: the film was rotated back by 90 degrees" in _texts(at, "info")
    assert "rotated by 90 degrees" not in _texts(at, "error")
    assert "Corrected before analysis" in _texts(at, "warning")  # the note beside the film (and in reports)
    at.button(key="dx_uncorrect").click().run()
    assert "rotated by 90 degrees (counter-clockwise)" in _texts(at, "error")


def test_onnx_backend_is_offered_when_exported_and_gives_the_same_result(trained):
    """With weights/onnx/vbreathnet.onnx beside the weights, the page offers ONNX Runtime; the result
    on it is the PyTorch one (same class, probabilities within the export tolerance) and the heatmap
    says it came from the PyTorch twin."""
    from app_fixtures import chest_png_bytes

    from cxr_core.export import backend, to_onnx
    from cxr_core.models import load_classifier

    at = _upload(_app(), ("a.png", chest_png_bytes(256), "image/png"))
    assert not [s for s in at.selectbox if s.label == "Inference backend"]  # nothing exported: no choice
    torch_metrics = {m.label: m.value for m in at.metric}

    to_onnx.export_classifier(load_classifier("vbreathnet"), films=None, log=lambda m: None)
    backend._load_onnx.cache_clear()
    at = _upload(_app(), ("a.png", chest_png_bytes(256), "image/png"))
    box = next(s for s in at.selectbox if s.label == "Inference backend")
    assert box.options == ["PyTorch (fp32)", "ONNX Runtime (fp32)"]
    box.set_value("ONNX Runtime (fp32)").run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric} == torch_metrics
    at.toggle(key="dx_heat").set_value(True).run()
    assert not at.exception, at.exception
    assert "computed by the PyTorch model" in _texts(at, "caption")


def test_compare_page_shows_the_probe_readings_and_the_versus_line(weights, monkeypatch, tmp_path):
    import json

    write_cards(weights, ("vbreathnet", "mobilenet_v2"))
    probes_dir = tmp_path / "probes"
    probes_dir.mkdir()
    monkeypatch.setattr(settings, "PROBES_DIR", probes_dir)
    at = _app()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert "No probe results yet" in _texts(at, "info")
    assert "MobileNetV2 (" in _texts(at, "markdown") and "in accuracy." in _texts(at, "markdown")
    result = {"probes": {"chance_accuracy": 1 / 3, "none": {"accuracy": 0.9, "coverage": 0.7},
                         "context_only": {"accuracy": 0.3, "coverage": 0.57, "coverage_with_gate": 0.02},
                         "shifts": {"inverted": {"accuracy_drop": 0.5}}}}
    (probes_dir / "vbreathnet.json").write_text(json.dumps(result))
    at.run()
    assert not at.exception, at.exception
    md = _texts(at, "markdown")
    assert "still answers 57% of films" in md and "2% would be answered" in md and "inverted (-50.0 points)" in md
