"""cxr_core.pipeline: one analysis per upload, the same numbers as the stages it calls, layers
computed once on demand and cached, notes and records built from what was shown."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
from app_fixtures import chest_png_bytes, real_cxr3_image

from cxr_core import classify, detection, explain, io, pipeline, quality, settings
from cxr_core import segment as lung_task
from cxr_core.models import load_classifier


@pytest.fixture(scope="module")
def clf():
    """The shipped V-BreathNet (committed in weights/), as the app loads it."""
    return load_classifier(settings.DEFAULT_CLASSIFIER)


def _boxes() -> list[detection.Box]:
    return [detection.Box(40.0, 50.0, 120.0, 140.0, 14, "Active tuberculosis", 0.81, True),
            detection.Box(150.0, 60.0, 200.0, 100.0, 0, "Aortic enlargement", 0.30, False),
            detection.Box(10.0, 10.0, 30.0, 30.0, 8, "Nodule/Mass", 0.07, True)]


def test_same_numbers_as_the_stages_it_calls(clf) -> None:
    real = real_cxr3_image()
    name, data = real if real else ("chest.png", chest_png_bytes(256))
    a = pipeline.analyse(data, classifier=clf, filename=name, age_group="adult")
    image = io.load_image(data, name)
    q = quality.assess(image)
    p = classify.predict(image, clf, quality=q, age_group="adult")
    np.testing.assert_array_equal(a.image.pixels, image.pixels)
    assert a.quality.verdict == q.verdict and a.quality.reasons == q.reasons
    assert a.prediction == p  # the same probabilities, call, abstention and reasons
    row = a.row()
    assert set(row) | {"file"} == set(pipeline.ROW_COLUMNS)
    assert row["predicted"] == p.predicted and row["p_covid"] == round(p.probabilities["covid"], 4)
    assert row["quality"] == q.verdict and row["abstained"] == p.abstained


def test_decodes_once_and_caches_each_layer(clf, monkeypatch) -> None:
    calls = {"load": 0, "explain": 0, "detect": 0}
    real_load, real_explain = io.load_image, explain.explain

    def counting_load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def counting_explain(*a, **k):
        calls["explain"] += 1
        return real_explain(*a, **k)

    def fake_detect(image, conf=0.25, **k):
        calls["detect"] += 1
        assert conf == settings.DETECTOR_MIN_CONF  # run once at the lowest threshold, then filtered
        return [b for b in _boxes() if b.confidence >= conf]

    monkeypatch.setattr(pipeline, "load_image", counting_load)
    monkeypatch.setattr(explain, "explain", counting_explain)
    monkeypatch.setattr(detection, "detect", fake_detect)
    a = pipeline.analyse(chest_png_bytes(256), classifier=clf)
    h1, h2 = a.heatmap(), a.heatmap()
    assert h1 is h2 and h1.target == a.prediction.predicted and h1.map.shape == a.image.pixels.shape
    other = next(c for c in settings.CLASSES if c != a.prediction.predicted)
    assert a.heatmap(other).target == other and not np.array_equal(a.heatmap(other).map, h1.map)
    assert [b.label for b in a.boxes(conf=0.5)] == ["Active tuberculosis"]
    assert [b.label for b in a.boxes(conf=0.05)] == ["Active tuberculosis", "Aortic enlargement", "Nodule/Mass"]
    assert [b.label for b in a.boxes(conf=0.05, classes=["Nodule/Mass"])] == ["Nodule/Mass"]
    a.record(boxes=a.boxes(conf=0.5))
    a.row()
    assert calls == {"load": 1, "explain": 2, "detect": 1}


def test_notes_follow_what_was_shown(clf, monkeypatch) -> None:
    a = pipeline.analyse(chest_png_bytes(256), classifier=clf)
    normal = dataclasses.replace(a, prediction=dataclasses.replace(
        a.prediction, predicted="normal", confidence=0.97, abstained=False, reasons=[]))
    shown = _boxes()[:2]
    notes = normal.notes(shown)
    assert len(notes) == 1 and "Active tuberculosis" in notes[0] and "Aortic enlargement" not in notes[0]
    assert normal.notes(None) == [] and normal.notes([shown[1]]) == []  # unvalidated findings alone: no conflict

    def implausible(image, segmenter=None, **k):
        mask = np.zeros(image.pixels.shape, np.float32)
        mask[:20, :20] = 1.0  # one speck in a corner: not two lung fields
        return lung_task.mask_from_probability(mask)

    monkeypatch.setattr(lung_task, "segment", implausible)
    assert normal.notes() == []  # lungs not segmented: no lung note
    assert not normal.lungs().plausible
    record = normal.record(boxes=shown, detector_conf=0.3)
    assert record["notes"][0].startswith("The lung outline looks implausible")
    assert any("Active tuberculosis" in n for n in record["notes"])
    assert record["disclaimer"] == settings.DISCLAIMER
    assert record["prediction"]["predicted"] == "normal"
    assert [b["label"] for b in record["findings"]["boxes"]] == ["Active tuberculosis", "Aortic enlargement"]


def test_without_a_classifier_the_image_and_quality_remain() -> None:
    a = pipeline.analyse(chest_png_bytes(256), classifier=None)
    assert a.prediction is None and a.quality is not None
    with pytest.raises(ValueError, match="No classifier"):
        a.heatmap()
    record = a.record()
    assert record["prediction"] is None and record["quality"]["verdict"] == a.quality.verdict
    assert a.row()["predicted"] == "" and a.row()["quality"] == a.quality.verdict


def test_unusable_input_raises_the_readers_message() -> None:
    with pytest.raises(pipeline.ImageLoadError, match="empty|not|could not"):
        pipeline.analyse(b"definitely not an image", classifier=None, filename="x.png")


def test_analysis_is_frozen_and_one_layer_runs_once_across_threads(clf, monkeypatch) -> None:
    a = pipeline.analyse(chest_png_bytes(256), classifier=clf)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.prediction = None  # type: ignore[misc]
    calls = []
    real_explain = explain.explain

    def slow_explain(*args, **kw):
        calls.append(1)
        time.sleep(0.2)  # both threads arrive while the first computes
        return real_explain(*args, **kw)

    monkeypatch.setattr(explain, "explain", slow_explain)
    out = []
    threads = [threading.Thread(target=lambda: out.append(a.heatmap())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and out[0] is out[1]
