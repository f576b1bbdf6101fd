"""cxr_core.dashboard: tables and figures from model-card JSON, and the viewer's image helpers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from app_fixtures import make_card, write_cards, write_detector_files
from cxr_core import dashboard, pipeline, settings


@pytest.fixture
def weights(tmp_path, monkeypatch):
    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setattr(settings, "WEIGHTS_DIR", d)
    return d


def test_missing_cards_are_not_trained(weights):
    cards = dashboard.load_cards()
    assert list(cards) == list(settings.CLASSIFIERS) and all(c is None for c in cards.values())
    table = dashboard.comparison_table(cards)
    assert (table["Status"] == dashboard.NOT_TRAINED).all()
    assert table.filter(like=dashboard.MEASURED).isna().all().all()  # no made-up numbers


def test_comparison_table_reads_cards_and_separates_paper_figures(weights):
    write_cards(weights, ("vbreathnet", "densenet121"), faithful={"densenet121": False})
    (weights / "vgg16.json").write_text("{not json")  # unreadable card counts as missing
    cards = dashboard.load_cards()
    table = dashboard.comparison_table(cards).set_index("Model")
    assert list(dashboard.COMPARISON_COLUMNS[1:]) == list(table.columns)
    vb = table.loc["V-BreathNet"]
    assert vb[f"{dashboard.MEASURED}: params total"] == 790_307
    assert vb[f"{dashboard.PAPER}: params total"] == 792_291
    assert vb[f"{dashboard.MEASURED}: test accuracy"] == pytest.approx(0.9)
    assert vb[f"{dashboard.PAPER}: test accuracy"] == pytest.approx(0.97)
    assert vb[f"{dashboard.MEASURED}: training time (min)"] == pytest.approx(10.0)
    assert vb[f"{dashboard.MEASURED}: latency (ms / image)"] == pytest.approx(15.0)
    assert table.loc["DenseNet121", "Faithful to paper"].startswith("no")
    assert math.isnan(table.loc["DenseNet121", f"{dashboard.PAPER}: test accuracy"])
    assert table.loc["VGG16", "Status"] == dashboard.NOT_TRAINED
    assert dashboard.deviations(cards) == {"DenseNet121": ["FIXTURE: trained for fewer epochs than the paper"]}
    val = dashboard.comparison_table(cards, "val")
    assert f"{dashboard.MEASURED}: val accuracy" in val.columns


def test_figures_have_one_trace_per_trained_model(weights):
    write_cards(weights, ("vbreathnet", "mobilenet_v2"))
    cards = dashboard.load_cards()
    assert len(dashboard.per_class_figure(cards).data) == 2 * 3  # 2 models x P/R/F1
    roc = dashboard.roc_figure(cards)
    assert sum(1 for t in roc.data if t.showlegend is not False) == 2 * 3
    assert "AUC 0.950" in roc.data[0].name
    assert len(dashboard.training_curves_figure(cards).data) == 2 * 4
    assert len(dashboard.tradeoff_figure(cards).data) == 2
    cm = dashboard.confusion_figure(cards["vbreathnet"], "test", "vbreathnet")
    z = np.asarray(cm.data[0].z, dtype=float)
    assert z.shape == (3, 3) and np.allclose(z.sum(axis=1), 1.0)  # row-normalised
    assert dashboard.reliability_figure(cards["vbreathnet"]).data


def test_per_group_table_and_card_summary(weights):
    write_cards(weights, ("vbreathnet",))
    cards = dashboard.load_cards()
    df = dashboard.per_group_table(cards)
    assert set(df["Grouping"]) == {"source", "age group"}
    row = df[(df["Group"] == "kermany_paediatric")].iloc[0]
    assert row["Recall Viral Pneumonia"] == pytest.approx(0.91)
    assert math.isnan(row["Recall COVID-19"])  # class absent from the group: missing, not 0
    assert "age" in dashboard.GROUP_NOTE and "source" in dashboard.GROUP_NOTE
    summary = dict(dashboard.card_summary("vbreathnet", cards["vbreathnet"]).values)
    assert summary["Parameters (total / trainable)"] == "790,307 / 790,307"
    assert summary["Initial weights"].startswith("random")
    assert summary["Metrics recomputed"] == "n/a"
    card = dict(cards["vbreathnet"], rescored={"date": "2026-12-02", "code_version": "0123456789abcdef", "why": "fp32"})
    assert dict(dashboard.card_summary("vbreathnet", card).values)["Metrics recomputed"] == "2026-12-02 (code 0123456789ab): fp32"


def test_detector_files_missing_and_present(weights):
    files = dashboard.load_detector_files()
    assert files == {"card": None, "metrics": None, "figures": None}
    assert dashboard.detector_label(None) == "research preview"
    write_detector_files(weights)
    files = dashboard.load_detector_files()
    assert dashboard.detector_n_images(files["card"], files["figures"]) == 647  # training images, not 15,000
    assert dashboard.detector_label(files["card"]) == "research preview — trained on 647 images"
    ap = dashboard.per_class_ap_table(files["metrics"]).set_index("Class")
    assert ap.loc["Active tuberculosis", "Validated"] == "yes"
    assert ap.loc["Aortic enlargement", "Validated"].startswith("no")
    assert math.isnan(ap.loc["Calcification", "AP@0.4"])
    assert dashboard.headline_detector_metrics(files["metrics"]) == {"mAP@0.4": 0.31, "mAP@0.5": 0.28,
                                                                     "TB AP@0.4": 0.42}
    figs = files["figures"]
    labels = dashboard.label_distribution_table(figs)
    assert set(labels["dataset"]) == {"VinBigData (all annotations)", "TBX11K"} and len(labels) == 4
    assert len(dashboard.box_area_figure(figs).data) == 4
    pva = dashboard.predicted_vs_actual_figure(figs)
    assert list(pva.data[1].x) == [80, 0]
    assert dashboard.boxes_per_image_figure(figs) is not None
    assert "Mean IoU between readers" in dashboard.agreement_table(figs).columns
    assert dashboard.per_class_ap_figure(files["metrics"]) is not None
    assert dashboard.detector_limits(files["card"])


def test_figures_tolerate_empty_or_odd_inputs():
    assert dashboard.label_distribution_figure({}) is None
    assert dashboard.box_area_figure({"box_area": {"per_class": {"X": {"quantile_values": None}}}}) is None
    assert dashboard.predicted_vs_actual_figure({"predicted_vs_actual": None}) is None
    assert dashboard.per_class_ap_table({}).empty
    # dict-of-dicts form is accepted too
    fig = dashboard.predicted_vs_actual_figure({"predicted_vs_actual": {"A": {"actual": 3, "predicted": 1}}})
    assert list(fig.data[0].x) == [3]


def test_window_level_zoom_and_layers():
    px = np.linspace(0, 1, 100 * 80, dtype=np.float32).reshape(100, 80)
    ident = dashboard.window_level(px)
    assert ident.dtype == np.uint8 and ident.min() == 0 and ident.max() == 255
    brighter = dashboard.window_level(px, brightness=0.2)
    assert brighter.mean() > ident.mean()
    contrasty = dashboard.window_level(px, contrast=2.0)
    assert (contrasty == 0).sum() > (ident == 0).sum() and (contrasty == 255).sum() > (ident == 255).sum()
    rgb = dashboard.to_rgb(ident)
    assert rgb.shape == (100, 80, 3)
    z = dashboard.zoom(rgb, 2.0, 1.0, 1.0)  # bottom-right corner, kept inside the image
    assert z.shape == rgb.shape and z[-1, -1, 0] >= rgb[-1, -1, 0] - 2
    assert dashboard.zoom(rgb, 1.0) is rgb
    heat = np.zeros((10, 8), np.float32)
    heat[5:, 4:] = 1.0
    from cxr_core.explain import overlay

    blended = overlay(rgb, heat, alpha=0.5, fade=True)
    assert blended.shape == rgb.shape
    assert np.array_equal(blended[:40, :30], rgb[:40, :30])  # zero activation leaves the image untouched
    assert not np.array_equal(blended[80:, 60:], rgb[80:, 60:])
    mask = np.zeros((100, 80), bool)
    mask[20:80, 10:40] = True
    outlined = dashboard.draw_outline(rgb, mask)
    assert (outlined != rgb).any() and np.array_equal(outlined[50, 25], rgb[50, 25])


def test_boxes_helpers():
    boxes = [SimpleNamespace(x0=100, y0=100, x1=300, y1=300, class_id=14, label="Active tuberculosis",
                             confidence=0.8, validated=True),
             SimpleNamespace(x0=10, y0=10, x1=50, y1=60, class_id=0, label="Aortic enlargement",
                             confidence=0.3, validated=False)]
    assert [b.label for b in dashboard.filter_boxes(boxes, 0.5)] == ["Active tuberculosis"]
    assert [b.label for b in dashboard.filter_boxes(boxes, 0.0, ["Aortic enlargement"])] == ["Aortic enlargement"]
    table = dashboard.boxes_table(boxes)
    assert list(table["Validated"]) == ["yes", "not validated"]
    image = SimpleNamespace(width=200, height=100, meta=SimpleNamespace(original_size=(400, 200)))
    assert dashboard.box_scale(image) == (0.5, 0.5)


def test_probability_figure_and_metadata():
    fig = dashboard.probability_figure({"covid": 0.1, "normal": 0.7, "viral_pneumonia": 0.2}, "normal")
    bar = fig.data[0]
    assert list(bar.y) == ["COVID-19", "Normal", "Viral Pneumonia"] and list(bar.text) == ["10%", "70%", "20%"]
    assert bar.marker.color[1] != bar.marker.color[0]  # predicted class highlighted
    assert [dashboard.format_probability(p) for p in (0.999, 0.5, 0.001)] == [">99%", "50%", "<1%"]
    abst = dashboard.probability_figure({"covid": 0.4, "normal": 0.35, "viral_pneumonia": 0.25}, "covid", True)
    assert len(set(abst.data[0].marker.color)) == 1  # nothing highlighted when abstaining
    meta = SimpleNamespace(format="DICOM", modality="DX", view_position="PA", original_size=(2000, 2500),
                           pixel_spacing=(0.139, 0.139), bit_depth=12, photometric="MONOCHROME2",
                           downscaled=True, identifiers={"PatientName": "Doe^Jane"})
    shown = dashboard.clinical_metadata(meta)
    assert shown["View"] == "PA" and shown["Pixel spacing"] == "0.139 x 0.139 mm" and "PatientName" not in shown
    assert dashboard.clinical_metadata(meta, include_identifiers=True)["Patient name"] == "Doe^Jane"


def test_safe_load_never_raises():
    from app_fixtures import chest_png_bytes

    image, err = dashboard.safe_load(chest_png_bytes(128), "chest.png")
    assert err is None and image.pixels.shape == (128, 128)
    image, err = dashboard.safe_load(b"hello, not an image", "x.png")
    assert image is None and err and "Traceback" not in err
    image, err = dashboard.safe_load(b"", "empty.png")
    assert image is None and "empty" in err


def test_readme_section(tmp_path):
    p = tmp_path / "README.md"
    p.write_text("# T\n## Known confounds and limitations\n- a\n- b\n## Licences\nCC BY\n")
    assert dashboard.readme_section(p, "Known confounds") == "- a\n- b"
    assert dashboard.readme_section(p, "licen") == "CC BY"
    assert dashboard.readme_section(p, "nothing") is None
    assert dashboard.readme_section(tmp_path / "missing.md", "x") is None


def test_dashboard_does_not_import_streamlit():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(dashboard))
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("streamlit" in (m or "") for m in names | mods)


def test_cards_on_disk_are_valid_json_when_present():
    """Real cards in weights/ (when training has produced them) must parse into the comparison table."""
    cards = {n: c for n, c in dashboard.load_cards().items()}
    table = dashboard.comparison_table(cards)
    assert len(table) == len(settings.CLASSIFIERS)
    present = [(name, card) for name, card in cards.items() if card]
    if not present:
        pytest.skip("no trained model cards in weights/")
    for (name, card), (_, row) in zip(cards.items(), table.iterrows()):
        if not card:
            assert row["Status"] == dashboard.NOT_TRAINED
            continue
        json.dumps(card)
        test = dashboard.split_metrics(card, "test")
        assert test["n"] > 0, name
        # the table shows the card's own numbers, and they are real metrics (a NaN would fail here)
        for col, key in (("test accuracy", "accuracy"), ("test macro-F1", "macro_f1"), ("test ECE", "ece")):
            value = row[f"{dashboard.MEASURED}: {col}"]
            assert 0.0 <= value <= 1.0 and value == pytest.approx(test[key]), (name, col)
        assert row[f"{dashboard.MEASURED}: params total"] == card["params"]["total"] > 0


def test_md_escape_neutralises_markdown():
    assert dashboard.md_escape("a.png") == "a.png"
    assert dashboard.md_escape("[x](http://e)") == "\\[x\\](http://e)"
    assert dashboard.md_escape("**b** <i>") == "\\*\\*b\\*\\* <i>"


def test_ablation_pairs_match_variant_cards_to_shipped_models(weights):
    write_cards(weights, ("mobilenet_v2",))
    assert dashboard.ablation_pairs(dashboard.load_cards()) == {}
    (weights / "ablations").mkdir()
    variant = make_card("mobilenet_v2", acc=0.8)
    variant["display_name"] = "MobileNetV2 + lung crop"
    (weights / "ablations" / "mobilenet_v2.json").write_text(json.dumps(variant))
    (weights / "ablations" / "vgg16.json").write_text(json.dumps(make_card("vgg16")))  # no shipped vgg16: ignored
    pairs = dashboard.ablation_pairs(dashboard.load_cards())
    assert list(pairs) == ["mobilenet_v2"]
    table = dashboard.comparison_table(pairs["mobilenet_v2"])
    assert list(table["Model"]) == ["MobileNetV2", "MobileNetV2 + lung crop"]
    assert list(table[f"{dashboard.MEASURED}: test accuracy"].round(3)) == [0.9, 0.8]


def test_ablation_default_is_chosen_on_validation_not_test(weights):
    write_cards(weights, ("mobilenet_v2",))
    (weights / "ablations").mkdir()
    variant = make_card("mobilenet_v2", acc=0.8)  # test 0.80, val 0.81: loses to the shipped 0.90 / 0.91
    variant["display_name"] = "MobileNetV2 + lung crop"
    path = weights / "ablations" / "mobilenet_v2.json"
    path.write_text(json.dumps(variant))
    pair = dashboard.ablation_pairs(dashboard.load_cards())["mobilenet_v2"]
    table = dashboard.ablation_table(pair)
    assert list(table["val accuracy"].round(3)) == [0.91, 0.81]
    assert list(table["test accuracy"].round(3)) == [0.9, 0.8]
    assert "**MobileNetV2**" in dashboard.ablation_choice(pair)
    variant["metrics"]["val"]["accuracy"] = 0.95  # better on val, still worse on test: the rule follows val
    path.write_text(json.dumps(variant))
    pair = dashboard.ablation_pairs(dashboard.load_cards())["mobilenet_v2"]
    assert dashboard.ablation_choice(pair).startswith("Default by the selection rule: **MobileNetV2 + lung crop**. Only")
    assert "not a like-for-like" not in dashboard.ablation_choice(pair)
    # within one standard error of each other, the probes decide: the variant answers more lung-less films
    variant["metrics"]["val"]["accuracy"] = 0.915
    path.write_text(json.dumps(variant))
    pair = dashboard.ablation_pairs(dashboard.load_cards())["mobilenet_v2"]
    shortcut = {"context_only": {"coverage": 0.6}, "shifts": {"blur": {"accuracy_drop": 0.02}}}
    lungs = {"context_only": {"coverage": 0.1}, "shifts": {"blur": {"accuracy_drop": 0.05}}}
    keys = list(pair)
    text = dashboard.ablation_choice(pair, {keys[0]: lungs, keys[1]: shortcut})
    assert text.startswith("Default by the selection rule: **MobileNetV2**.") and "60% answered" in text
    assert "No probe result for MobileNetV2 + lung crop" in dashboard.ablation_choice(pair, {keys[0]: lungs})


def test_ablation_with_another_recipe_is_flagged(weights):
    write_cards(weights, ("mobilenet_v2",))
    (weights / "ablations").mkdir()
    variant = make_card("mobilenet_v2", acc=0.8)
    variant["display_name"] = "MobileNetV2 + lung crop"
    variant["training"]["epochs"] = 99  # the shipped card trained for 3 epochs
    (weights / "ablations" / "mobilenet_v2.json").write_text(json.dumps(variant))
    pair = dashboard.ablation_pairs(dashboard.load_cards())["mobilenet_v2"]
    mismatch = dashboard.ablation_mismatch(pair)
    assert len(mismatch) == 1 and mismatch[0].startswith("training.epochs:") and mismatch[0].endswith("vs 99")
    assert "not a like-for-like comparison" in dashboard.ablation_choice(pair)
    variant["training"]["epochs"] = pair["mobilenet_v2"]["training"]["epochs"]
    variant["training"]["weight_ema"] = 0.0  # a card from before the field existed means the same: no EMA
    pair["mobilenet_v2 (variant)"] = variant
    assert "weight_ema" not in pair["mobilenet_v2"]["training"] and dashboard.ablation_mismatch(pair) == []
    variant["training"]["weight_ema"] = 0.998
    assert dashboard.ablation_mismatch(pair) == ["training.weight_ema: 0.0 vs 0.998"]


def test_box_conflict_for_validated_findings_against_the_suggestion():
    box = lambda label, validated: SimpleNamespace(label=label, validated=validated)  # noqa: E731
    normal = SimpleNamespace(predicted="normal", abstained=False)
    boxes = [box("Active tuberculosis", True), box("Nodule/Mass", False)]
    msg = pipeline.box_conflict(normal, boxes)
    assert msg.startswith("The detector marks Active tuberculosis while") and "Nodule" not in msg
    assert pipeline.box_conflict(normal, [box("Nodule/Mass", False)]) is None
    covid = SimpleNamespace(predicted="covid", abstained=False)
    msg = pipeline.box_conflict(covid, boxes)  # tuberculosis is outside the classifier's classes
    assert msg.startswith("The detector marks Active tuberculosis while the classifier suggests COVID-19")
    assert "no tuberculosis class" in msg and "Nodule" not in msg
    viral = SimpleNamespace(predicted="viral_pneumonia", abstained=False)
    assert "suggests Viral Pneumonia" in pipeline.box_conflict(viral, boxes)
    # a validated non-TB finding fits a pneumonia suggestion: no conflict
    assert pipeline.box_conflict(covid, [box("Consolidation", True), box("Nodule/Mass", False)]) is None
    assert pipeline.box_conflict(SimpleNamespace(predicted="normal", abstained=True), boxes) is None
    assert pipeline.box_conflict(None, boxes) is None


def test_worklist_row_says_what_happened_to_each_file():
    lean = "Leaning (not an answer)"
    err = dashboard.worklist_row("x.dcm", error="The file is empty.")
    assert err["Result"] == "not analysed" and err["Notes"] == "The file is empty." and err["File"] == "x.dcm"
    quality = SimpleNamespace(verdict="warn", reasons=["Low contrast."])
    assert dashboard.worklist_row("a.png", quality)["Result"] == "no model"
    reasons = ["Confidence 55% is below the 92% needed to suggest a class.", "A second, long reason in full."]
    pred = SimpleNamespace(abstained=True, predicted="covid", confidence=0.55, age_group="paediatric",
                           reasons=reasons, probabilities={"covid": 0.30, "normal": 0.55, "viral_pneumonia": 0.15})
    row = dashboard.worklist_row("a.png", quality, pred)
    assert list(row) == list(dashboard.WORKLIST_COLUMNS)
    assert row["Result"] == "abstained" and row["Quality"] == "check" and row["Age group"] == "Child aged 1-5 years"
    assert row[lean] == "Normal (55%) — not an answer"  # the top class, marked as not an answer
    assert row["Notes"] == " ".join(reasons + ["Low contrast."])  # every note in full
    answered = SimpleNamespace(abstained=False, predicted="viral_pneumonia", confidence=0.999, age_group=None,
                               reasons=[], probabilities={"viral_pneumonia": 0.999})
    assert dashboard.worklist_row("b.png", None, answered)["Result"] == "Viral Pneumonia"
    assert dashboard.worklist_row("b.png", None, answered)["Age group"] == "not given"
    assert dashboard.worklist_row("b.png", None, answered)[lean] == ""
    csv = dashboard.worklist_csv([row, dashboard.worklist_row("b.png", None, answered)]).decode()
    assert csv.splitlines()[0].startswith("File,Quality,Result") and csv.count("\n") == 3
    assert "not an answer" in csv and "A second, long reason in full." in csv


def test_figure_labels_legends_and_titles(weights):
    write_cards(weights, ("vbreathnet", "mobilenet_v2"))
    cards = dashboard.load_cards()
    roc = dashboard.roc_figure(cards)
    named = [t.name for t in roc.data if t.showlegend is not False]
    for label in ("COVID-19", "Normal", "Viral Pneumonia"):
        assert any(f"V-BreathNet · {label} (AUC" in n for n in named), named  # the legend names the class
    assert roc.layout.xaxis.title.text == "false-positive rate" and roc.layout.yaxis.title.text == "true-positive rate"
    assert roc.layout.legend.y < 0  # below the axis titles' row, outside the plots
    rel = dashboard.reliability_figure(cards["vbreathnet"])
    assert [t.name for t in rel.data] == ["before calibration", "after calibration", "perfect calibration"]
    assert rel.layout.legend.y < 0 and rel.layout.height >= 450  # large, legend outside the data
    assert rel.layout.xaxis.title.text == "mean confidence" and rel.layout.yaxis.title.text == "accuracy"
    cm = dashboard.confusion_figure(cards["vbreathnet"], "test", "vbreathnet")
    assert "row-normalised" in cm.layout.title.text and "<br>" in cm.data[0].text[0][0]  # count and row share
    for fig in (roc, rel, cm, dashboard.per_class_figure(cards)):
        assert fig.layout.title.y >= 0.95 and fig.layout.margin.t >= 60  # title in the margin, clear of the plots


def test_box_size_figure_draws_one_labelled_box_per_class(weights):
    write_detector_files(weights)
    figs = dashboard.load_detector_files()["figures"]
    fig = dashboard.box_area_figure(figs)
    names = [t.name for t in fig.data]
    assert len(names) == len(set(names)) == 4
    assert [list(t.x) for t in fig.data] == [[n] for n in names]  # each at its own labelled position
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.title.text.startswith("box area")
    pva = dashboard.predicted_vs_actual_figure(figs)
    assert [t.name for t in pva.data] == ["radiologists (actual)", "detector (predicted)"]
    assert pva.layout.legend.y >= 1.0 and pva.layout.xaxis.title.text.startswith("boxes")  # legend above the plot


def test_sanity_note_names_the_method_shown():
    grad = {"method": "gradcam", "n_images": 30, "passed": {"randomisation": True, "deletion_salient_below_random": False}}
    level, text = dashboard.sanity_note(grad, "gradcam")
    assert level == "warning" and "Grad-CAM" in text and "deletion salient below random" in text
    assert "they passed randomisation" in text
    level, text = dashboard.sanity_note(None, "eigencam")
    assert level == "info" and "not checked for Eigen-CAM" in text
    # a Grad-CAM result handed over for Eigen-CAM is not Eigen-CAM's result
    assert dashboard.sanity_note(grad, "eigencam")[0] == "info"
    ok = dict(grad, passed={"randomisation": True})
    assert dashboard.sanity_note(ok, "gradcam")[0] == "ok"
    assert dashboard.sanity_warning(grad, "gradcam") and dashboard.sanity_warning(ok, "gradcam") is None


def test_sanity_table_reports_each_check_with_its_numbers():
    """The comparison page's sanity table: committed results as they are, ROAD marked 'not run' when a
    result predates it, and a model without a result left out."""
    import json

    from cxr_core import explain

    with_road = {"method": "gradcam", "cam_layer": "features.27 (BatchNorm2d)", "n_images": 30,
                 "randomisation": {"spearman_mean": -0.05},
                 "deletion": {"auc_salient_mean": 0.732, "auc_random_mean": 0.660},
                 "road": {"auc_salient_mean": 0.41, "auc_random_mean": 0.83},
                 "passed": {"randomisation_spearman_below_0.5": True, "deletion_salient_below_random": False,
                            "road_salient_below_random": True}}
    old = json.loads(json.dumps(with_road))
    del old["road"], old["passed"]["road_salient_below_random"]
    table = dashboard.sanity_table({"vbreathnet": with_road, "mobilenet_v2": old, "vgg16": None})
    assert len(table) == 2
    row, prior = table.iloc[0], table.iloc[1]
    assert row["method (layer)"] == "Grad-CAM (features.27 (BatchNorm2d))" and row["films"] == 30
    assert (row["randomisation"], row["blur deletion"], row["ROAD deletion"]) == ("pass", "FAIL", "pass")
    assert row["blur deletion AUC: salient / random pixels"] == "0.732 / 0.660"
    assert row["ROAD deletion AUC: salient / random pixels"] == "0.410 / 0.830"
    assert prior["ROAD deletion"] == "not run" and prior["ROAD deletion AUC: salient / random pixels"] == ""
    committed = {n: explain.sanity_result(n) for n in settings.CLASSIFIERS}
    if any(committed.values()):  # the committed files read without error, one row each
        assert len(dashboard.sanity_table(committed)) == sum(1 for r in committed.values() if r)


def test_results_say_whether_they_were_measured_on_the_shipped_weights(tmp_path, monkeypatch):
    """A probe or sanity file outlives the weights it measured when a new model ships: the tables and
    the Diagnose note must tell shipped-weights results from others, by the weights' hash."""
    import hashlib

    from cxr_core import provenance
    from cxr_core.ui import probes as probe_views

    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    (tmp_path / "vbreathnet.pt").write_bytes(b"weights one")
    one = hashlib.sha256(b"weights one").hexdigest()
    assert provenance.measured_on({"weights_sha256": one}, "vbreathnet") == "shipped weights"
    assert provenance.measured_on({"weights_sha256": "0" * 64}, "vbreathnet") == "OTHER weights"
    assert provenance.measured_on({}, "vbreathnet") == "not recorded"
    assert provenance.measured_on({"weights_sha256": one}, "vgg16") is None  # nothing shipped to compare with
    (tmp_path / "vbreathnet.pt").write_bytes(b"weights two, shipped later")  # a new model ships
    assert provenance.measured_on({"weights_sha256": one}, "vbreathnet") == "OTHER weights"

    passed = {"method": "gradcam", "n_images": 30, "passed": {"randomisation": True}, "weights_sha256": one}
    level, text = dashboard.sanity_note(passed, "gradcam", "vbreathnet")
    assert level == "info" and "other weights" in text
    assert dashboard.sanity_note(passed, "gradcam")[0] == "ok"  # without a model: the result as it is
    assert dashboard.sanity_table({"vbreathnet": passed}).iloc[0]["measured on"] == "OTHER weights"
    row = probe_views.probe_table({"vbreathnet": {"none": {"accuracy": 0.9}, "weights_sha256": one}}).iloc[0]
    assert row["measured on"] == "OTHER weights"
    assert "other weights" in probe_views.readings("vbreathnet", {"weights_sha256": one})[0]


def test_committed_measurements_describe_the_shipped_weights():
    """Shipping new weights without rerunning their probes and heatmap sanity would leave the pages
    showing the old model's figures: every committed result that records its weights must match."""
    from cxr_core import explain, provenance
    from cxr_core.ui.cards import read_json

    checked = 0
    for name in settings.CLASSIFIERS:
        for result in (read_json(settings.PROBES_DIR / f"{name}.json"), explain.sanity_result(name)):
            if result and result.get("weights_sha256"):
                assert provenance.measured_on(result, name) == "shipped weights", name
                checked += 1
    assert checked >= 4  # V-BreathNet's probes and sanity, and the baselines' probes


def test_sanity_result_is_looked_up_per_method(tmp_path, monkeypatch):
    import json

    from cxr_core import explain

    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    (tmp_path / "explain_sanity_vbreathnet.json").write_text(json.dumps({"method": "gradcam", "passed": {}}))
    assert explain.sanity_result("vbreathnet", "gradcam")["method"] == "gradcam"
    assert explain.sanity_result("vbreathnet", "eigencam") is None
    explain.sanity_path("vbreathnet", "eigencam").write_text(json.dumps({"method": "eigencam", "passed": {}}))
    assert explain.sanity_path("vbreathnet", "eigencam").name == "explain_sanity_vbreathnet_eigencam.json"
    assert explain.sanity_result("vbreathnet", "eigencam")["method"] == "eigencam"
    assert explain.sanity_result("vbreathnet")["method"] == "gradcam"  # without a method: as before


def test_window_presets_invert_and_viewer():
    px = np.linspace(0.2, 0.6, 64 * 64, dtype=np.float32).reshape(64, 64)
    centre, width = dashboard.auto_window(px)
    assert 0.39 < centre < 0.41 and 0.38 < width < 0.40
    b, c = dashboard.sliders_from_window(*dashboard.WINDOW_PRESETS["Full range"])
    assert (b, c) == (0.0, 1.0) and dashboard.window_from_sliders(b, c) == (0.5, 1.0)
    b, c = dashboard.sliders_from_window(*dashboard.WINDOW_PRESETS["Lung"])
    assert dashboard.window_from_sliders(b, c) == pytest.approx(dashboard.WINDOW_PRESETS["Lung"], abs=0.02)
    g = dashboard.window_level(px)
    assert (dashboard.invert(g) == 255 - g).all()
    rgb = dashboard.to_rgb(g)
    fig = dashboard.viewer_figure({"Original": rgb, "With layers": rgb[..., ::-1]}, (0.139, 0.139))
    assert [t.name for t in fig.data] == ["Original", "With layers"] and fig.layout.dragmode == "pan"
    assert fig.data[0].source.startswith("data:image/png;base64,")
    assert fig.layout.xaxis2.matches == "x"  # both panels zoom and pan together
    legend = dashboard.heatmap_legend_figure("Grad-CAM", "Normal")
    assert legend.data[0].colorscale and "Grad-CAM relevance for Normal" in legend.layout.xaxis.title.text


def test_patient_banner_only_with_identifiers():
    meta = SimpleNamespace(identifiers={"PatientName": "Doe^Jane", "PatientID": "P1", "PatientSex": "F",
                                        "StudyDate": "20240131"}, age_group="adult", view_position="PA")
    assert dashboard.patient_banner(meta, False) == {}
    banner = dashboard.patient_banner(meta, True)
    assert banner == {"Patient name": "Doe, Jane", "Patient ID": "P1", "Sex": "female",
                      "Age band": settings.AGE_GROUP_LABELS["adult"], "Study date": "2024-01-31", "View": "PA"}
    assert dashboard.readable_tag("ReferringPhysicianName") == "Referring physician"
    assert dashboard.format_temperature(1.23456) == "1.23" and dashboard.format_temperature(None) == "n/a"


def test_comparison_table_has_coverage_and_accuracy_on_answered():
    card = make_card("vbreathnet")
    card["calibration"] |= {"test_coverage": 0.7, "test_accuracy_answered": 0.975,
                            "val_coverage_at_threshold": 0.66, "val_accuracy_answered": 0.98}
    test = dashboard.comparison_table({"vbreathnet": card, "vgg16": None}).set_index("Model")
    assert test.loc["V-BreathNet", f"{dashboard.MEASURED}: test coverage (share answered)"] == pytest.approx(0.7)
    assert test.loc["V-BreathNet", f"{dashboard.MEASURED}: test accuracy on answered"] == pytest.approx(0.975)
    assert math.isnan(test.loc["VGG16", f"{dashboard.MEASURED}: test accuracy on answered"])
    val = dashboard.comparison_table({"vbreathnet": card}, "val").iloc[0]
    assert val[f"{dashboard.MEASURED}: val coverage (share answered)"] == pytest.approx(0.66)
    assert val[f"{dashboard.MEASURED}: val accuracy on answered"] == pytest.approx(0.98)


def test_a_model_with_two_variants_is_one_group_and_the_studied_factor_is_not_a_flaw(weights):
    """The shipped 256-px V-BreathNet with its 128-px and lung-crop variants: one table, the input size
    of a size ablation is the factor under study, a different epoch count is still flagged."""
    write_cards(weights, ("vbreathnet",))
    (weights / "ablations").mkdir()
    small = make_card("vbreathnet", acc=0.85)
    small["display_name"], small["input_size"] = "V-BreathNet 128 px", 64
    crop = make_card("vbreathnet", acc=0.8)
    crop["display_name"] = "V-BreathNet + lung crop"
    crop["preprocessing"] = {"lung_crop": True}
    (weights / "ablations" / "vbreathnet__128px.json").write_text(json.dumps(small))
    (weights / "ablations" / "vbreathnet__lungcrop.json").write_text(json.dumps(crop))
    group = dashboard.ablation_pairs(dashboard.load_cards())["vbreathnet"]
    assert [dashboard.display_name(n, c) for n, c in group.items()] == [
        "V-BreathNet", "V-BreathNet 128 px", "V-BreathNet + lung crop"]
    assert len(dashboard.ablation_table(group)) == 3
    assert dashboard.ablation_mismatch(group) == []
    small["training"]["epochs"] = 12
    (weights / "ablations" / "vbreathnet__128px.json").write_text(json.dumps(small))
    group = dashboard.ablation_pairs(dashboard.load_cards())["vbreathnet"]
    assert dashboard.ablation_mismatch(group) == ["V-BreathNet 128 px: training.epochs: 3 vs 12"]
    assert "not a like-for-like" in dashboard.ablation_choice(group)


def _card_with_cis(name: str = "vbreathnet") -> dict:
    card = make_card(name)
    card["metrics"]["test"]["ci95"] = {"accuracy": [0.87, 0.925], "macro_f1": [0.86, 0.92], "ece": [0.021, 0.041]}
    card["metrics"]["val"]["ci95"] = {"accuracy": [0.88, 0.93], "macro_f1": [0.87, 0.925], "ece": [0.02, 0.04]}
    card["calibration"] |= {"test_coverage": 0.7, "test_accuracy_answered": 0.975, "test_coverage_ci95": [0.66, 0.74],
                            "test_accuracy_answered_ci95": [0.96, 0.988], "val_coverage_at_threshold": 0.66,
                            "val_accuracy_answered": 0.98}
    return card


def test_summary_table_shows_each_headline_figure_with_its_interval():
    cards = {"vbreathnet": _card_with_cis(), "densenet121": make_card("densenet121"), "vgg16": None}
    table = dashboard.summary_table(cards).set_index("Model")
    col = lambda m: f"{dashboard.MEASURED}: test {m}"  # noqa: E731
    vb = table.loc["V-BreathNet"]
    assert vb[col("accuracy")] == "0.900 (95 % CI 0.870–0.925)"
    assert vb[col("coverage (share answered)")] == "0.700 (95 % CI 0.660–0.740)"
    assert vb[col("accuracy on answered")] == "0.975 (95 % CI 0.960–0.988)"
    assert vb[col("macro-F1")] == "0.890 (95 % CI 0.860–0.920)"
    assert vb[col("ECE")] == "0.030 (95 % CI 0.021–0.041)"
    assert table.loc["DenseNet121", col("accuracy")] == "0.900"  # no interval in the card: the figure alone
    assert table.loc["VGG16", col("accuracy")] == "—"
    assert vb[f"{dashboard.PAPER}: test accuracy"] == pytest.approx(0.97)  # paper figures: numbers, own columns
    assert list(table.columns) == list(dashboard.comparison_table(cards).set_index("Model").columns)
    html = dashboard.comparison_styler(table.reset_index()).to_html()
    assert "0.900 (95 % CI 0.870–0.925)" in html and "790,307" in html and "0.970" in html
    # the README's numeric table is unchanged
    assert dashboard.comparison_table(cards).set_index("Model").loc["V-BreathNet", col("accuracy")] == pytest.approx(0.9)
    notes = dashboard.ci_notes(cards)
    assert notes == ["**DenseNet121**: CI not computed for this card: rescore with "
                     "`python -m cxr_core.train --model densenet121 --rescore`"]


def test_missing_intervals_are_named_and_the_rescore_command_exists():
    from cxr_core.classify import train

    card = _card_with_cis()
    del card["calibration"]["test_coverage_ci95"], card["calibration"]["test_accuracy_answered_ci95"]
    assert dashboard.ci_notes({"vbreathnet": card}) == [
        "**V-BreathNet**: CI not computed for coverage (share answered), accuracy on answered: rescore with "
        "`python -m cxr_core.train --model vbreathnet --rescore`"]
    # validation split: the metrics' intervals are in the card, coverage intervals are test-only by design
    val = dashboard.summary_table({"vbreathnet": card}, "val").iloc[0]
    assert val[f"{dashboard.MEASURED}: val accuracy"] == "0.910 (95 % CI 0.880–0.930)"
    assert val[f"{dashboard.MEASURED}: val coverage (share answered)"] == "0.660"
    assert dashboard.ci_notes({"vbreathnet": card}, "val") == []
    crop = make_card("mobilenet_v2")
    crop["data"]["lung_crop"] = True
    assert dashboard.rescore_command("mobilenet_v2", crop).endswith("--rescore --lung-crop CHEST_BOXES.csv")
    args = train.parse_args(dashboard.rescore_command("vbreathnet").split()[3:])  # what the note tells users to run
    assert args.rescore and args.model == "vbreathnet"


def test_versus_statement_reads_both_cards_and_their_intervals(weights):
    write_cards(weights, ("vbreathnet", "mobilenet_v2"))
    cards = dashboard.load_cards()
    a, b = (dashboard.split_metrics(cards[n], "test")["accuracy"] for n in ("vbreathnet", "mobilenet_v2"))
    text = dashboard.versus_statement(cards)
    verdict = "beats" if a > b else ("ties with" if a == b else "does not beat")
    assert f"({a:.3f}) {verdict} MobileNetV2 ({b:.3f})" in text and "interval" not in text
    cards["vbreathnet"]["metrics"]["test"]["ci95"] = {"accuracy": [0.80, 0.95]}
    cards["mobilenet_v2"]["metrics"]["test"]["ci95"] = {"accuracy": [0.90, 0.97]}
    assert "overlap, so the difference is not shown" in dashboard.versus_statement(cards)
    cards["mobilenet_v2"]["metrics"]["test"]["ci95"] = {"accuracy": [0.96, 0.99]}
    assert "do not overlap" in dashboard.versus_statement(cards)
    assert dashboard.versus_statement({"vbreathnet": cards["vbreathnet"], "mobilenet_v2": None}) is None


def test_readme_classifier_tables_are_what_the_dashboard_prints(capsys):
    """The README's two classifier tables are the output of `python -m cxr_core.dashboard` on the committed
    cards: a rescored or retrained card without a regenerated README fails here."""
    from cxr_core.ui import cards

    if not (settings.WEIGHTS_DIR / "vbreathnet.json").is_file():
        pytest.skip("no committed V-BreathNet card in weights/")
    assert cards.main([]) == 0
    out = capsys.readouterr().out
    block = out.split("\n### Ablations")[0].strip()
    assert block.startswith("### Classifiers on the cxr3 test split") and "### Per source / age group" in block
    assert block in (settings.ROOT / "README.md").read_text(), \
        "README tables are stale: paste the output of `python -m cxr_core.dashboard` (up to the ablations)"
