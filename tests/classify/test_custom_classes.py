"""A classifier retrained on a hospital's own folder of classes (issue #16, item 4).

`classify train --data FOLDER` (one sub-folder per class) must give weights whose classes travel with
them: the card and the checkpoint record them, `load_classifier` builds the right output width, and
prediction, pipeline rows, the predict CLI, reports and the cxr3-only clinical rules follow without a
KeyError. The shipped cxr3 models must keep exactly their three classes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_core import classify, pipeline, report, settings
from cxr_core.classify import predict_files, train
from cxr_core.data import class_folders, manifest_classes, split_folder
from cxr_core.models import load_checkpoint, load_classifier, weights_path

CLASSES = ("bacterial_pneumonia", "covid", "normal", "tuberculosis")  # sorted: the output order
PER_CLASS = 6


def _film(rng: np.random.Generator, k: int, side: int = 96) -> np.ndarray:
    """A grey chest-like film: bright body, two darker lung fields, a bright mediastinum, and a
    class-dependent opacity (position and size vary with class index `k`) under noise."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = 0.75 - 0.35 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.3, 0.7):
        img -= 0.35 * (((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
    img += 0.25 * (np.abs(xx - 0.5) < 0.06)
    cx, cy = 0.25 + 0.5 * (k % 2), 0.35 + 0.3 * (k // 2)
    img += 0.3 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (0.01 + 0.004 * k)))
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_folder(root: Path, classes: tuple[str, ...], per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(_film(rng, k)).save(root / c / f"{c}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny real run through the CLI entry point: 4 classes, 1 epoch at 64 px."""
    tmp = tmp_path_factory.mktemp("custom")
    data = make_folder(tmp / "films", CLASSES, PER_CLASS)
    (data / "notes.txt").write_text("not a class")  # a stray file beside the class folders is ignored
    (data / "empty_class").mkdir()  # a sub-folder without images is not a class
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "CACHE_DIR", tmp / "cache")
        train.main(["--model", "vbreathnet", "--data", str(data), "--size", "64", "--epochs", "1", "--batch", "4",
                    "--threads", "1", "--precision", "fp32", "--no-quality-filter", "--out-dir", str(out)])
    load_classifier.cache_clear()
    yield {"data": data, "out": out, "tmp": tmp}
    load_classifier.cache_clear()


def test_card_and_checkpoint_carry_the_folder_classes_and_the_split(trained: dict) -> None:
    out = trained["out"]
    card = json.loads((out / "vbreathnet.json").read_text())
    assert card["classes"] == list(CLASSES)
    assert load_checkpoint(out / "vbreathnet.pt")["classes"] == list(CLASSES)
    assert set(card["metrics"]["test"]["per_class"]) == set(CLASSES)
    assert set(card["data"]["quality_verdicts_train"]) == set(CLASSES)
    assert card["known_limits"] == train.FOLDER_LIMITS
    # the split is written next to the card, stratified: every class in every split
    assert card["data"]["split_file"] == "vbreathnet.split.csv" and card["data"]["folder"] == str(trained["data"])
    with (out / "vbreathnet.split.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CLASSES) * PER_CLASS
    for s in ("train", "val", "test"):
        assert {r["label"] for r in rows if r["split"] == s} == set(CLASSES)
    assert all((out / r["path"]).resolve().is_file() for r in rows)  # paths relative to the split file
    assert card["data"]["split_sizes"] == {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}


def test_load_classifier_predict_and_pipeline_follow_the_new_classes(trained: dict) -> None:
    clf = load_classifier("vbreathnet", trained["out"])
    assert clf.classes == CLASSES
    film = next((trained["data"] / "tuberculosis").iterdir())
    analysis = pipeline.analyse(film, classifier=clf, age_group="other")
    pred = analysis.prediction
    assert tuple(pred.probabilities) == CLASSES
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.predicted in CLASSES and pred.label == settings.class_label(pred.predicted)
    # the cxr3 age rule ("no patients of this age") is not about this model
    assert not any("training data has no" in r for r in pred.reasons)
    row = analysis.row()
    assert [k for k in row if k.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    assert set(row) | {"file"} == set(pipeline.row_columns(CLASSES))
    # a heatmap of an unknown-to-cxr3 class, by name and by display name
    heat = analysis.heatmap(target="tuberculosis")
    assert heat.target == "tuberculosis" and heat.target_label == "Tuberculosis"
    assert analysis.heatmap(target="Bacterial pneumonia").target == "bacterial_pneumonia"
    # the report record and PDF name every class without a KeyError
    record = analysis.record()
    assert set(record["prediction"]["probabilities"]) == set(CLASSES)
    assert bytes(report.to_pdf(record))[:4] == b"%PDF"


def test_predict_cli_writes_the_new_probability_columns(trained: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(settings, "WEIGHTS_DIR", trained["out"])
    load_classifier.cache_clear()
    try:
        out_csv = tmp_path / "rows.csv"
        assert predict_files.main([str(trained["data"] / "covid"), "--csv", str(out_csv), "--threads", "1"]) == 0
    finally:
        load_classifier.cache_clear()
    with out_csv.open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert list(reader.fieldnames or []) == list(pipeline.row_columns(CLASSES))
    assert len(rows) == PER_CLASS and all(r["predicted"] in CLASSES for r in rows)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-3 for r in rows)


def test_batch_worker_and_store_keep_the_new_probability_columns(trained: dict, tmp_path: Path, monkeypatch) -> None:
    from cxr_core.batch.outputs import ResultStore, count_rows
    from cxr_core.batch.worker import Scorer

    monkeypatch.setattr(settings, "WEIGHTS_DIR", trained["out"])
    load_classifier.cache_clear()
    try:
        films = sorted(str(f) for f in (trained["data"] / "normal").iterdir())[:2]
        table = Scorer("vbreathnet", threads=1)({"file": films})
    finally:
        load_classifier.cache_clear()
    rows = table.to_pylist()
    assert all(not r["error"] for r in rows)
    assert all(sum(r[f"p_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5) for r in rows)
    store = ResultStore(tmp_path, CLASSES)
    final = store.finalise(rows, include_identifiers=False)
    assert [c for c in final.column_names if c.startswith("p_")] == [f"p_{c}" for c in CLASSES]
    assert store.existing()[0]["p_tuberculosis"] == pytest.approx(min(rows, key=lambda r: r["file"])["p_tuberculosis"])
    assert set(count_rows(rows, CLASSES)["predicted"]) == set(CLASSES)


def test_unknown_classes_pass_the_cxr3_rules_without_a_rule() -> None:
    for group in settings.AGE_GROUPS:
        assert classify.scope_reason("tuberculosis", group) is None
    probs = np.array([0.05, 0.05, 0.1, 0.8])
    assert classify.decide(probs, 0.7, age_group="other", classes=CLASSES) == (3, False, [])
    # known names in a retrained model's class set get no cxr3 age rule either
    assert classify.decide(np.array([0.1, 0.8, 0.05, 0.05]), 0.7, age_group="paediatric", classes=CLASSES)[1] is False
    # while the shipped classes keep it
    assert classify.decide(np.array([0.8, 0.1, 0.1]), 0.7, age_group="paediatric")[1] is True
    tb_box = SimpleNamespace(label="Active tuberculosis", validated=True)
    for predicted in CLASSES:
        pred = SimpleNamespace(predicted=predicted, abstained=False, probabilities=dict.fromkeys(CLASSES, 0.25))
        assert pipeline.box_conflict(pred, [tb_box]) is None
    assert pipeline.box_conflict(SimpleNamespace(predicted="tuberculosis", abstained=False), [tb_box]) is None
    assert settings.class_label("tuberculosis") == "Tuberculosis"
    assert settings.class_label("bacterial_pneumonia") == "Bacterial pneumonia"
    assert settings.class_label("viral_pneumonia") == "Viral Pneumonia"  # the cxr3 wording stays


def test_a_folder_with_one_class_stops_with_a_clear_message(tmp_path: Path, capsys) -> None:
    data = make_folder(tmp_path / "one", ("normal",), 4)
    with pytest.raises(SystemExit) as exc:
        train.main(["--model", "vbreathnet", "--data", str(data), "--out-dir", str(tmp_path / "out")])
    assert "at least 2 sub-folders of images" in str(exc.value) and "normal (4)" in str(exc.value)
    small = make_folder(tmp_path / "small", ("a", "b"), 2)
    with pytest.raises(SystemExit, match="at least 3 images"):
        class_folders(small)
    assert not (tmp_path / "out").exists()  # nothing written before the folder is accepted


def test_the_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "films", ("a", "b"), 20)
    first, classes = split_folder(data, tmp_path / "s1.csv", seed=7)
    again, _ = split_folder(data, tmp_path / "s2.csv", seed=7)
    other, _ = split_folder(data, tmp_path / "s3.csv", seed=8)
    assert classes == ("a", "b")
    assert first.read_text() == again.read_text() and first.read_text() != other.read_text()
    with first.open() as fh:
        rows = list(csv.DictReader(fh))
    for c in classes:
        counts = {s: sum(r["label"] == c and r["split"] == s for r in rows) for s in ("train", "val", "test")}
        assert counts == {"train": 14, "val": 3, "test": 3}


def test_the_shipped_classes_are_unchanged() -> None:
    assert settings.CLASSES == ("covid", "normal", "viral_pneumonia")
    assert manifest_classes(["normal", "covid"]) == settings.CLASSES  # a cxr3 subset keeps all three
    assert manifest_classes(["tb", "normal"]) == ("normal", "tb")
    assert pipeline.ROW_COLUMNS[1:4] == ("p_covid", "p_normal", "p_viral_pneumonia")
    if not weights_path("vbreathnet").is_file():
        pytest.skip("weights/vbreathnet.pt not trained yet")
    load_classifier.cache_clear()
    clf = load_classifier("vbreathnet")
    assert clf.classes == settings.CLASSES
    with torch.inference_mode():
        assert clf.model(torch.zeros(1, 3, clf.input_size, clf.input_size)).shape == (1, len(settings.CLASSES))
