"""The context-only probe and the acquisition-shift stress test (cxr_core.probes, evaluate --probes)."""

from __future__ import annotations

import math

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
def test_evaluate_probes_reports_numbers_for_every_probe() -> None:
    from cxr_core import evaluate
    from cxr_core.data import CLASS_TO_INDEX
    from cxr_core.models import load_classifier

    try:
        load_classifier("vbreathnet")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"shipped V-BreathNet weights not loadable: {e}")
    rows: list[dict[str, str]] = []
    for c in settings.CLASSES:
        rows += [r for r in cxr3_rows("test") if r["label"] == c][:3]
    files = [str(settings.CXR3_DIR / r["path"]) for r in rows]
    y = np.array([CLASS_TO_INDEX[r["label"]] for r in rows])
    out = evaluate.probe_files("vbreathnet", files, y)
    assert set(out["shifts"]) == set(probes.SHIFTS)
    for s in [out["none"], out["context_only"], *out["shifts"].values()]:
        assert s["n"] == 9 and 0 <= s["accuracy"] <= 1 and 0 <= s["coverage"] <= 1
        assert math.isnan(s["accuracy_answered"]) == (s["coverage"] == 0)
    for s in out["shifts"].values():
        assert s["accuracy_drop"] == pytest.approx(out["none"]["accuracy"] - s["accuracy"])
    # the inverted film is a different picture: at least one call changes on nine real films
    assert out["shifts"]["inverted"]["changed_calls"] > 0
