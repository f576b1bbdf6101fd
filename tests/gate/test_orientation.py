"""cxr_core.gate.orientation: the transforms, the thresholds, the committed model on real films, and the
gate's reasons (rotated / inverted fail, mirrored warns)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import chest_phantom, cxr3_rows, requires_cxr3

from cxr_core import settings
from cxr_core.gate import orientation, quality
from cxr_core.io import load_image

needs_weights = pytest.mark.skipif(not orientation.available(), reason="weights/orientation.pt not trained here")


def test_undo_inverts_every_transform() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    for k in range(4):
        for m in (False, True):
            for v in (False, True):
                t = orientation.transform(img, k, m, v)
                back = orientation.undo(t.astype(np.float32) / 255.0, k, m, v)
                np.testing.assert_allclose(back * 255.0, img, atol=1e-3)
    assert orientation.transform(img, 1, False, False).shape == (30, 40)


def test_thresholds_keep_false_alarms_at_the_target() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    labels = np.stack([rng.integers(0, 4, n), rng.integers(0, 2, n), rng.integers(0, 2, n)], 1)
    probs = np.zeros((n, 6))
    probs[:, 0] = np.where(labels[:, 0] == 0, rng.beta(8, 1, n), rng.beta(1, 8, n))
    probs[:, 4] = np.where(labels[:, 1] == 1, rng.beta(8, 1, n), rng.beta(1, 8, n))
    probs[:, 5] = np.where(labels[:, 2] == 1, rng.beta(8, 1, n), rng.beta(1, 8, n))
    t = orientation.choose_thresholds(probs, labels, target=0.01)
    called = orientation.decide(probs, t)
    upright = labels[:, 0] == 0
    assert np.mean([o.rotation != 0 for o, u in zip(called, upright) if u]) <= 0.0125
    assert np.mean([o.inverted for o, lab in zip(called, labels) if lab[2] == 0]) <= 0.0125
    assert t["mirrored"] >= 0.5 and t["inverted"] >= 0.5


def _fake(rotation: int = 0, mirrored: bool = False, inverted: bool = False) -> orientation.Orientation:
    return orientation.Orientation(rotation, mirrored, inverted, 0.9 if not rotation else 0.01,
                                   0.9 if mirrored else 0.01, 0.9 if inverted else 0.01)


@pytest.mark.parametrize(("found", "verdict", "text"), [
    (_fake(90), "fail", "rotated by 90 degrees (counter-clockwise)"),
    (_fake(270), "fail", "rotated by 90 degrees (clockwise)"),
    (_fake(180), "fail", "upside down"),
    (_fake(inverted=True), "fail", "inverted (negative)"),
    (_fake(mirrored=True), None, "mirrored left-right"),
])
def test_gate_fails_rotated_and_inverted_films_and_warns_on_mirroring(monkeypatch, found, verdict, text) -> None:
    monkeypatch.setattr(orientation, "available", lambda: True)
    monkeypatch.setattr(orientation, "check", lambda image: found)
    monkeypatch.setattr(quality, "_plausibility", lambda image: None)
    image = chest_phantom(256)
    report = quality.assess(image)
    assert any(text in r for r in report.reasons), report.reasons
    assert report.orientation == found.to_dict()
    if verdict == "fail":
        assert report.verdict == "fail" and report.failed[0] == quality.ORIENTATION and report.reasons[0].find(text) >= 0
    else:
        assert quality.ORIENTATION in report.warned and quality.ORIENTATION not in report.failed
    assert quality.assess(image, check_plausibility=False).orientation is None  # the training filter skips it


@needs_weights
@requires_cxr3
def test_committed_model_on_real_test_films() -> None:
    """Real cxr3 test films, each in all 16 variants, through the app's exact path (`check`)."""
    rows = cxr3_rows("test", 24, seed=5)
    films = [load_image(settings.CXR3_DIR / r["path"]).pixels for r in rows]
    as_is = [orientation.check(p) for p in films]
    assert sum(o.rotation == 0 and not o.inverted for o in as_is) >= len(films) - 1
    caught_rot = caught_inv = total = 0
    for p in films:
        u8 = np.rint(p * 255).astype(np.uint8)
        for k in (1, 2, 3):
            for v in (False, True):
                o = orientation.check(orientation.transform(u8, k, False, v).astype(np.float32) / 255.0)
                caught_rot += o.rotation != 0
                caught_inv += o.inverted == v
                total += 1
    assert caught_rot / total >= 0.95 and caught_inv / total >= 0.95


@needs_weights
def test_card_says_what_was_measured() -> None:
    import json

    card = json.loads(orientation.card_file().read_text())
    assert card["input_size"] == orientation.SIZE and card["thresholds"]["upright"] > 0
    for key in ("rotated_caught", "inverted_caught", "mirrored_caught", "false_alarm_fail"):
        assert 0.0 <= card["metrics"]["val_cxr3"][key] <= 1.0
    from cxr_core.provenance import sha256_file

    assert card["weights_sha256"] == sha256_file(orientation.weights_file())


def test_cli_says_how_to_train_without_weights(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    assert orientation.main(["check", str(tmp_path / "x.png")]) == 2
    assert "orient train" in capsys.readouterr().err


def test_a_rotated_inverted_film_is_corrected_and_analysed_again(monkeypatch) -> None:
    """The app's one-click correction: undo what the check found, rerun the pipeline, say so."""
    from cxr_core import pipeline
    from cxr_core.io import CXRImage, ImageMeta

    upright = chest_phantom((240, 200)).astype(np.float32)  # H x W, not square: a quarter turn shows
    film = 1.0 - np.rot90(upright, 1)  # turned 90 degrees counter-clockwise and inverted

    def fake_check(image):
        pixels = image.pixels if hasattr(image, "pixels") else image
        wrong = pixels.shape == film.shape and np.allclose(pixels, film)
        return _fake(90 if wrong else 0, inverted=wrong)

    monkeypatch.setattr(orientation, "available", lambda: True)
    monkeypatch.setattr(orientation, "check", fake_check)
    monkeypatch.setattr(quality, "_plausibility", lambda image: None)  # the phantom is no real film
    meta = ImageMeta(format="PNG", original_size=(film.shape[1], film.shape[0]), bit_depth=8, photometric="MONOCHROME2")
    a = pipeline.analyse(CXRImage(np.ascontiguousarray(film), meta), classifier=settings.DEFAULT_CLASSIFIER)
    assert a.quality.verdict == "fail" and a.prediction.abstained
    assert a.row()["orientation"] == "rotated 90 inverted"
    fixed = a.corrected()
    np.testing.assert_allclose(fixed.image.pixels, upright, atol=1e-6)
    assert fixed.image.meta.original_size == (200, 240)
    assert fixed.quality.orientation["rotation"] == 0 and quality.ORIENTATION not in fixed.quality.failed
    assert fixed.notes()[0].startswith("Corrected before analysis: the film was rotated back by 90 degrees and made "
                                       "positive again")
    assert fixed.record()["notes"][0] == fixed.notes()[0] and fixed.row()["orientation"] == "upright"
    assert fixed.corrected() is None


def test_a_non_chest_image_is_called_that_not_rotated(monkeypatch) -> None:
    """The orientation reading means something only on a chest film: when the not-a-CXR check fails
    the film as it is, the film turned the way orientation says must pass it, or the not-a-CXR reason wins."""
    image = chest_phantom(256)
    monkeypatch.setattr(orientation, "available", lambda: True)
    monkeypatch.setattr(orientation, "check", lambda im: _fake(180))
    turned = orientation.undo(image, 2, False, False)
    monkeypatch.setattr(quality, "_plausibility", lambda im: (np.allclose(im, turned), 2.0, "its content is unlike chest radiographs"))
    report = quality.assess(image)  # a chest film upside down: the not-a-CXR check passes it once turned
    assert report.reasons[0].startswith("The film appears upside down") and quality.PLAUSIBILITY not in report.failed
    monkeypatch.setattr(quality, "_plausibility", lambda im: (False, 3.0, "it looks like a photograph"))
    report = quality.assess(image)  # not a chest film either way: no orientation claim, no correction offered
    assert report.reasons[0].startswith("This does not look like a frontal chest X-ray (it looks like a photograph)")
    assert report.orientation is None and quality.ORIENTATION not in report.failed
