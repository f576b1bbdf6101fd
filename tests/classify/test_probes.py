"""The context-only probe and the acquisition-shift stress test (cxr_core.probes, evaluate --probes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import cxr3_rows, requires_cxr3

from cxr_core import probes, settings


def _film() -> np.ndarray:
    rng = np.random.default_rng(0)
    p = np.full((300, 400), 0.2, np.float32)
    p[50:250, 60:180] = 0.8  # a "lung" field
    return np.clip(p + rng.normal(0, 0.01, p.shape).astype(np.float32), 0, 1)


def test_context_only_replaces_the_dilated_lungs_by_the_mean_grey_of_the_rest() -> None:
    p = _film()
    mask = np.zeros(p.shape, bool)
    mask[56:244, 66:174] = True  # 6 px inside the field: the dilation (12 px here) must cover the rim
    out = probes.context_only(p, mask)
    assert out.shape == p.shape and out.dtype == np.float32
    assert np.ptp(out[50:250, 60:180]) == 0  # the whole field, rim included, is one grey
    assert out[150, 120] == pytest.approx(0.2, abs=0.01)  # the mean of the background, not of the lungs
    assert np.array_equal(out[:, 300:], p[:, 300:])  # far from the lungs nothing changes


def test_every_shift_keeps_a_valid_film_and_changes_it() -> None:
    p = _film()
    rng = np.random.default_rng(1)
    assert set(probes.SHIFTS) >= {"gamma_0.7", "gamma_1.4", "contrast_+30%", "contrast_-30%", "gaussian_noise_0.03",
                                  "blur_sigma_2", "jpeg_q30", "downscale_128", "border_crop_5%", "text_markers", "inverted"}
    for name, shift in probes.SHIFTS.items():
        out = np.asarray(shift(p, rng))
        assert out.ndim == 2 and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, name
        assert out.shape != p.shape or not np.allclose(out, p, atol=1e-3), f"{name} did nothing"
    assert probes.SHIFTS["border_crop_5%"](p, rng).shape == (270, 360)
    assert np.allclose(probes.SHIFTS["inverted"](p, rng), 1 - p)


def test_working_copy_is_never_enlarged() -> None:
    assert probes.working_copy(np.zeros((2000, 1000), np.float32)).shape == (512, 256)
    assert probes.working_copy(np.zeros((100, 80), np.float32)).shape == (100, 80)


@requires_cxr3
def test_evaluate_probes_reports_numbers_for_every_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_core import evaluate
    from cxr_core.classify import val
    from cxr_core.models import load_classifier

    try:
        load_classifier("vbreathnet")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"shipped V-BreathNet weights not loadable: {e}")
    rows: list[dict[str, str]] = []
    for c in settings.CLASSES:
        rows += [r for r in cxr3_rows("test") if r["label"] == c][:3]
    for r in rows:  # a class-folder copy of nine real test films, as `evaluate --data FOLDER` takes
        (tmp_path / r["label"]).mkdir(exist_ok=True)
        (tmp_path / r["label"] / Path(r["path"]).name).symlink_to(settings.CXR3_DIR / r["path"])
    decoded: list[str] = []
    real_load = val.load_image
    monkeypatch.setattr(val, "load_image", lambda f, *a, **k: decoded.append(str(f)) or real_load(f, *a, **k))
    result = evaluate.evaluate("vbreathnet", tmp_path, with_probes=True)
    assert result["n"] == 9 and len(decoded) == 9 == len(set(decoded))  # each film decoded once, probes included
    out = result["probes"]
    assert set(out["shifts"]) == set(probes.SHIFTS)
    for s in [out["none"], out["context_only"], *out["shifts"].values()]:
        assert s["n"] == 9 and 0 <= s["accuracy"] <= 1 and 0 <= s["coverage"] <= 1
        assert math.isnan(s["accuracy_answered"]) == (s["coverage"] == 0)
    for s in out["shifts"].values():
        assert s["accuracy_drop"] == pytest.approx(out["none"]["accuracy"] - s["accuracy"])
    # the inverted film is a different picture: at least one call changes on nine real films
    assert out["shifts"]["inverted"]["changed_calls"] > 0
    for s in (out["none"], out["context_only"]):  # what the app answers, quality gate included
        assert 0 <= s["gate_failed_share"] <= 1 and s["coverage_with_gate"] <= s["coverage"]
    # the figures say which weights they describe: the shipped file, by its hash
    from cxr_core.provenance import sha256_file

    assert result["weights_sha256"] == sha256_file(settings.WEIGHTS_DIR / "vbreathnet.pt")


def test_the_gate_only_removes_answers_and_is_counted_per_film() -> None:
    y = np.array([0, 1, 2, 0])
    probs = np.array([[0.95, 0.03, 0.02], [0.1, 0.85, 0.05], [0.02, 0.02, 0.96], [0.1, 0.9, 0.0]])
    s = probes._with_gate({}, y, probs, 0.9, np.array([True, True, False, True]))
    # confident: films 0, 2, 3; the gate fails film 2 -> answered 0 (right) and 3 (wrong)
    assert s["gate_failed_share"] == 0.25 and s["coverage_with_gate"] == 0.5
    assert s["accuracy_answered_with_gate"] == 0.5
    none = probes._with_gate({}, y, probs, 0.9, np.zeros(4, bool))
    assert none["coverage_with_gate"] == 0 and math.isnan(none["accuracy_answered_with_gate"])


def _probe_result(ctx_acc: float, ctx_answered: float, drops: dict[str, float]) -> dict:
    return {"probes": {"chance_accuracy": 1 / 3, "threshold": 0.9,
                       "none": {"accuracy": 0.9, "coverage": 0.7, "accuracy_answered": 0.97, "n": 600},
                       "context_only": {"accuracy": ctx_acc, "coverage": ctx_answered, "n": 600},
                       "shifts": {k: {"accuracy_drop": d, "accuracy": 0.9 - d} for k, d in drops.items()}}}


def test_probe_readings_follow_the_measured_numbers(tmp_path, monkeypatch):
    """The comparison page's probe lines: a model answering on lung-less films is called out, one at
    chance that stops answering is not; shifts over 5 points are listed, worst first."""
    import json

    from cxr_core import settings
    from cxr_core.ui import probes as P

    monkeypatch.setattr(settings, "PROBES_DIR", tmp_path)
    (tmp_path / "vbreathnet.json").write_text(json.dumps(_probe_result(0.30, 0.57, {"inverted": 0.56, "jpeg_q30": 0.003})))
    (tmp_path / "mobilenet_v2.json").write_text(json.dumps(_probe_result(0.34, 0.02, {"blur_sigma_2": 0.01})))
    (tmp_path / "vgg16.json").write_text("not json")  # unreadable: left out, no crash
    probes = P.load_probes()
    assert sorted(probes) == ["mobilenet_v2", "vbreathnet"]
    table = P.probe_table(probes).set_index("Model")
    assert table.loc["V-BreathNet", "answered, lungs greyed out"] == 0.57
    assert table.loc["V-BreathNet", "worst shift"] == "inverted"
    vb, mn = P.readings("vbreathnet", probes["vbreathnet"]), P.readings("mobilenet_v2", probes["mobilenet_v2"])
    assert "still answers 57%" in vb[0] and "inverted (-56.0 points)" in vb[1] and "jpeg" not in vb[1]
    assert "no sign that it classifies from outside the lungs" in mn[0]
    assert "no shift lowers accuracy" in mn[1]
    assert list(P.shift_table(probes).index) == ["inverted", "jpeg_q30", "blur_sigma_2"]
