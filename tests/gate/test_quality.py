"""cxr_core.quality: metrics, verdicts and reasons on synthetic and real images, calibration,
threshold loading/fallback, CLI, speed and determinism."""

from __future__ import annotations

import json
import time
from dataclasses import FrozenInstanceError, replace

import cv2
import numpy as np
import pytest

from conftest import chest_phantom, cxr3_rows, encode, requires_cxr3
from cxr_core import quality, settings
from cxr_core.io import CXRImage, ImageMeta, load_image
from cxr_core.quality import QualityReport, assess, calibrate, compute_metrics, load_thresholds


def as_image(pixels: np.ndarray, colourfulness: float = 0.0, size: tuple[int, int] | None = None) -> CXRImage:
    pixels = np.clip(np.asarray(pixels, np.float32), 0, 1)
    h, w = pixels.shape
    meta = ImageMeta(format="PNG", original_size=size or (w, h), bit_depth=8, photometric="MONOCHROME2",
                     colourfulness=colourfulness)
    return CXRImage(pixels=pixels, meta=meta)


@pytest.fixture(autouse=True)
def _metrics_only_for_the_phantom(monkeypatch, tmp_path):
    """The synthetic phantom is a cartoon, and cxr_core.ood rightly says it is not a chest X-ray
    (see tests/gate/test_ood.py). These tests are about the quality metrics, so the plausibility check
    is skipped here (no OOD statistics in WEIGHTS_DIR); real CXRs through the check: test_ood.py."""
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    return chest_phantom(256, 0)


@pytest.fixture(params=["calibrated", "fallback"])
def thresholds(request):
    if request.param == "fallback":
        return quality.default_thresholds()
    if not settings.QUALITY_THRESHOLDS.is_file():
        pytest.skip(f"calibrated thresholds not found at {settings.QUALITY_THRESHOLDS}")
    return load_thresholds()


# --- report contract -------------------------------------------------------------------------


def test_report_contract(chest):
    rep = assess(as_image(chest))
    assert isinstance(rep, QualityReport)
    assert rep.verdict in ("pass", "warn", "fail")
    assert rep.ok is (rep.verdict != "fail")
    assert isinstance(rep.reasons, list) and all(isinstance(r, str) for r in rep.reasons)
    expected = {"contrast", "dynamic_range", "brightness", "sharpness", "dark_clipped", "bright_clipped",
                "colourfulness", "aspect_ratio", "min_side"}
    assert set(rep.metrics) == expected
    assert all(isinstance(v, float) and np.isfinite(v) for v in rep.metrics.values())
    with pytest.raises(FrozenInstanceError):
        rep.verdict = "pass"  # type: ignore[misc]
    assert QualityReport("warn").ok and not QualityReport("fail").ok


def test_clean_phantom_passes(chest, thresholds):
    rep = assess(as_image(chest), thresholds)
    assert rep.verdict == "pass", rep.reasons
    assert rep.reasons == [] and rep.summary() == "Image quality looks adequate."


def test_ndarray_input_accepted(chest):
    assert assess(chest).metrics == assess(as_image(chest)).metrics


# --- synthetic degradations: right verdict, right reason ------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma)


DEGRADED = {
    # name: (make(chest) -> CXRImage, metric expected to fire, phrase in the reason, worst allowed verdict)
    "blurred": (lambda c: as_image(_blur(c, 4.0)), "sharpness", "blurred", "fail"),
    "slightly-blurred": (lambda c: as_image(_blur(c, 1.6)), "sharpness", "blurred", "warn"),
    "flat-grey": (lambda c: as_image(np.full_like(c, 0.5) + np.random.default_rng(0).normal(0, 0.003, c.shape)),
                  "contrast", "low contrast", "fail"),
    "washed-out": (lambda c: as_image(0.45 + 0.08 * c), "contrast", "washed out", "fail"),
    "bright-saturated": (lambda c: as_image(np.where(c > 0.35, 1.0, c)), "bright_clipped", "pure white", "fail"),
    "dark-saturated": (lambda c: as_image(np.where(c < 0.7, 0.0, c)), "dark_clipped", "pure black", "fail"),
    "over-exposed": (lambda c: as_image(0.72 + 0.28 * c), "brightness", "very bright", "warn"),
    "burnt-out": (lambda c: as_image(0.93 + 0.07 * c), "brightness", "very bright", "fail"),
    "under-exposed": (lambda c: as_image(0.12 * c), "brightness", "very dark", "fail"),
    "harsh-binary": (lambda c: as_image((c > 0.45).astype(np.float32)), "contrast", "harsh contrast", "fail"),
    "pure-noise": (lambda c: as_image(np.random.default_rng(1).random(c.shape)), "sharpness", "noisy", "fail"),
    "colour-photo": (lambda c: as_image(c, colourfulness=0.25), "colourfulness", "in colour", "fail"),
    "tinted-scan": (lambda c: as_image(c, colourfulness=0.05), "colourfulness", "in colour", "warn"),
    "panorama": (lambda c: as_image(c, size=(2400, 600)), "aspect_ratio", "wider than tall", "fail"),
    "tall-crop": (lambda c: as_image(c, size=(500, 900)), "aspect_ratio", "taller than wide", "warn"),
    "low-resolution": (lambda c: as_image(c, size=(150, 150)), "min_side", "Low resolution", "warn"),
}


@pytest.mark.parametrize("name", list(DEGRADED))
def test_degraded_images_flagged_with_the_right_reason(name, chest, thresholds):
    make, metric, phrase, worst = DEGRADED[name]
    rep = assess(make(chest), thresholds)
    assert rep.verdict in ("warn", "fail"), (name, rep.metrics)
    assert metric in rep.failed + rep.warned, (name, rep.failed, rep.warned, rep.metrics)
    if worst == "fail":
        assert rep.verdict == "fail" and metric in rep.failed, (name, rep.reasons)
    assert any(phrase.lower() in r.lower() for r in rep.reasons), rep.reasons
    # the reason carries the measured value and the limit in plain words
    assert any("typical training images" in r or "expected" in r or "px" in r for r in rep.reasons)


def test_blur_gets_worse_monotonically(chest):
    values = [compute_metrics(as_image(_blur(chest, s) if s else chest))["sharpness"] for s in (0, 1, 2, 4)]
    assert values == sorted(values, reverse=True)


def test_sharpness_is_resolution_independent():
    hi = chest_phantom(1024, 5)
    sizes = [1024, 768, 512]
    values = [compute_metrics(as_image(cv2.resize(hi, (s, s), interpolation=cv2.INTER_AREA)))["sharpness"] for s in sizes]
    assert max(values) / min(values) < 1.3, values  # vs ~16x without a fixed working size


def test_contrast_metrics_do_not_depend_on_size(chest):
    big = cv2.resize(chest, (900, 900), interpolation=cv2.INTER_CUBIC)
    a, b = compute_metrics(as_image(chest)), compute_metrics(as_image(big))
    for k in ("contrast", "brightness", "dynamic_range"):
        assert abs(a[k] - b[k]) < 0.02, k


def test_loaded_colour_photo_fails_through_io_metadata(images):
    rng = np.random.default_rng(3)
    photo = cv2.resize((rng.random((16, 16, 3)) * 255).astype(np.uint8), (300, 300), interpolation=cv2.INTER_CUBIC)
    img = load_image(encode(photo, "JPEG", quality=90))
    rep = assess(img)
    assert rep.verdict == "fail" and "colourfulness" in rep.failed


@pytest.mark.parametrize(("tags", "verdict", "check", "words"), [
    ({}, "pass", None, None),
    ({"Modality": "CT"}, "fail", "dicom_modality", "modality CT"),
    ({"ViewPosition": "LL"}, "fail", "dicom_view", "view LL (lateral or oblique)"),
    ({"ViewPosition": "AP", "BodyPartExamined": "PORT CHEST"}, "pass", None, None),
    ({"BodyPartExamined": "HAND"}, "warn", "dicom_body_part", "body part HAND, not the chest. (warning)"),
])
def test_dicom_header_out_of_scope(tags, verdict, check, words, thresholds):
    from conftest import make_dicom, to_uint16

    img = load_image(make_dicom(to_uint16(chest_phantom(256), 12), bits_stored=12, **tags))
    rep = assess(img, thresholds, check_plausibility=False)
    assert rep.verdict == verdict, rep.reasons
    if check:
        assert check in (rep.failed if verdict == "fail" else rep.warned)
        assert words in rep.reasons[0]


def test_header_failures_come_before_warnings(thresholds):
    from conftest import make_dicom, to_uint16

    dcm = make_dicom(to_uint16(chest_phantom(256), 12), bits_stored=12, Modality="CT", ViewPosition="RL",
                     BodyPartExamined="ABDOMEN")
    rep = assess(load_image(dcm), thresholds, check_plausibility=False)
    assert rep.failed[:2] == ("dicom_modality", "dicom_view") and rep.warned[0] == "dicom_body_part"
    assert "modality CT" in rep.reasons[0] and "view RL" in rep.reasons[1] and "ABDOMEN" in rep.reasons[2]


def test_grey_png_roundtrip_passes(images):
    img = load_image(images.chest_png(size=512))
    assert assess(img).verdict == "pass"


# --- speed and determinism ----------------------------------------------------------------------


def test_deterministic(chest):
    img = as_image(chest)
    a, b = assess(img), assess(as_image(chest.copy()))
    assert a == b
    assert compute_metrics(img) == compute_metrics(img)


def test_training_filter_path_is_metrics_only(monkeypatch):
    # Speed is measured by the benchmark (python -m cxr_core.bench), not asserted here. The
    # training-data filter passes check_plausibility=False: metrics only, no network is run.
    from cxr_core import ood

    def no_network(*a, **k):
        raise AssertionError("the plausibility network must not run on the training-filter path")

    monkeypatch.setattr(ood, "is_chest_xray", no_network)
    imgs = [as_image(cv2.resize(chest_phantom(256, s), (224, 224))) for s in range(3)]
    thresholds = load_thresholds()
    reports = [assess(imgs[i % 3], thresholds, check_plausibility=False) for i in range(6)]
    assert all(r.plausibility is None for r in reports)
    assert reports[0] == reports[3]  # deterministic


# --- thresholds -----------------------------------------------------------------------------------


def _synthetic_metric_rows(n: int = 500) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    return [
        {"contrast": rng.normal(0.23, 0.04), "dynamic_range": rng.uniform(0.5, 1.0),
         "brightness": rng.normal(0.5, 0.07), "sharpness": float(np.exp(rng.normal(5.2, 0.5))),
         "dark_clipped": abs(rng.normal(0, 0.05)), "bright_clipped": abs(rng.normal(0, 0.01))}
        for _ in range(n)
    ]


def test_calibrate_rule():
    rows = _synthetic_metric_rows()
    th = calibrate(rows)
    assert set(th) == set(quality.CALIBRATED_METRICS)
    c = np.array([r["contrast"] for r in rows])
    assert th["contrast"]["warn_low"] == pytest.approx(np.percentile(c, 1), abs=1e-6)
    assert th["contrast"]["warn_high"] == pytest.approx(np.percentile(c, 99), abs=1e-6)
    assert th["contrast"]["fail_low"] == pytest.approx(np.percentile(c, 0.1) * 0.75, abs=1e-6)
    for metric, b in th.items():
        if "fail_low" in b:
            assert b["fail_low"] < b["warn_low"], metric
        if "fail_high" in b:
            assert b["fail_high"] > b["warn_high"], metric
    assert "warn_low" not in th["dark_clipped"] and "warn_high" not in th["dynamic_range"]
    # ~2 % of the calibration data warn, (almost) none fail
    verdicts = [assess_metrics(r, th) for r in rows]
    assert verdicts.count("fail") <= 2
    assert 0.01 <= verdicts.count("warn") / len(rows) <= 0.12


def assess_metrics(metrics: dict[str, float], th: dict[str, dict[str, float]]) -> str:
    verdict = "pass"
    for m, v in metrics.items():
        b = th.get(m, {})
        if v < b.get("fail_low", -np.inf) or v > b.get("fail_high", np.inf):
            return "fail"
        if v < b.get("warn_low", -np.inf) or v > b.get("warn_high", np.inf):
            verdict = "warn"
    return verdict


def test_calibrate_needs_enough_images():
    with pytest.raises(ValueError, match="at least 20"):
        calibrate(_synthetic_metric_rows(5))


def test_missing_or_broken_threshold_file_falls_back(tmp_path, monkeypatch, chest):
    monkeypatch.setattr(settings, "QUALITY_THRESHOLDS", tmp_path / "missing.json")
    assert load_thresholds() == quality.default_thresholds()
    assert quality.thresholds_source() == "built-in fallback values"
    assert assess(as_image(chest)).verdict == "pass"
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert load_thresholds(broken) == quality.default_thresholds()


def test_threshold_file_is_read_and_reloaded_when_changed(tmp_path, chest):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"thresholds": {"contrast": {"warn_low": 0.9, "fail_low": 0.8}}}))
    rep = assess(as_image(chest), path)
    assert rep.verdict == "fail" and rep.failed == ("contrast",)
    assert load_thresholds(path)["sharpness"] == quality.FALLBACK_THRESHOLDS["sharpness"]  # others default
    import os

    path.write_text(json.dumps({"thresholds": {"contrast": {"warn_low": 0.9}}}))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert assess(as_image(chest), path).verdict == "warn"


def test_shipped_thresholds_are_consistent():
    if not settings.QUALITY_THRESHOLDS.is_file():
        pytest.skip("weights/quality_thresholds.json not generated (python -m cxr_core.quality calibrate)")
    doc = json.loads(settings.QUALITY_THRESHOLDS.read_text())
    assert doc["dataset"] == "cxr3" and doc["split"] == "train" and doc["n_images"] >= 1000
    assert doc["working_size"] == quality.WORKING_SIZE
    for metric, b in doc["thresholds"].items():
        if "fail_low" in b:
            assert b["fail_low"] < b["warn_low"]
        if "fail_high" in b:
            assert b["fail_high"] > b["warn_high"]
        q = doc["quantiles"][metric]
        if "warn_low" in b:
            assert b["warn_low"] == pytest.approx(q["p1"], abs=1e-5)


# --- real data -----------------------------------------------------------------------------------


@requires_cxr3
def test_real_test_split_mostly_passes():
    rows = cxr3_rows("test", 100, seed=1)
    assert len(rows) == 100
    reports = [assess(load_image(settings.CXR3_DIR / r["path"])) for r in rows]
    ok = sum(r.ok for r in reports)
    assert ok >= 98, [(r.verdict, r.failed) for r in reports if not r.ok]
    passed = sum(r.verdict == "pass" for r in reports)
    assert passed >= 80  # warnings are for the unusual tail, not the norm


@requires_cxr3
def test_real_images_degraded_are_caught():
    rows = cxr3_rows("test", 10, seed=2)
    for r in rows:
        img = load_image(settings.CXR3_DIR / r["path"])
        if not assess(img).verdict == "pass":
            continue
        blurred = replace(img, pixels=_blur(img.pixels, 3.0))
        assert "sharpness" in assess(blurred).failed + assess(blurred).warned
        flat = replace(img, pixels=(0.5 + 0.03 * img.pixels).astype(np.float32))
        assert assess(flat).verdict == "fail"


@requires_cxr3
def test_cli_calibrate_report_check(tmp_path, capsys):
    out = tmp_path / "th.json"
    assert quality.main(["calibrate", "--limit", "60", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["n_images"] == 60 and set(doc["thresholds"]) == set(quality.CALIBRATED_METRICS)
    capsys.readouterr()
    assert quality.main(["report", "--split", "test", "--limit", "40", "--thresholds", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pass" in text and "fail" in text and "all" in text
    path = settings.CXR3_DIR / cxr3_rows("test", 1)[0]["path"]
    quality.main(["check", str(path)])
    assert str(path) in capsys.readouterr().out


def test_cli_check_without_data(images, capsys):
    p = images.chest_png()
    bad = images.write(b"hello", "bad.png")
    assert quality.main(["check", str(p), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "PASS" in out and "unreadable" in out
