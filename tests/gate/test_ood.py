"""cxr_core.ood: the not-a-chest-X-ray check and its wiring into the quality gate.

Unit tests of the statistics run everywhere (synthetic features). Tests that need the fitted
statistics (weights/ood.npz) or the shared ImageNet backbone skip with the reason; tests that
need real CXRs skip when ../shared is absent. No timing is asserted here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import chest_phantom, cxr3_rows, encode, requires_cxr3
from cxr_core import ood, quality, settings
from cxr_core.gate import ood_inputs
from cxr_core.io import CXRImage, ImageMeta, load_image

NOT_CXR = "This does not look like a frontal chest X-ray ("

requires_ood = pytest.mark.skipif(
    not ood.available(),
    reason=f"OOD statistics ({ood.weights_file()}) or the ImageNet backbone ({settings.MOBILENET_V2_IMAGENET}) "
    "missing; fit with: python -m cxr_core.ood fit --out weights/ood.npz",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def as_image(pixels: np.ndarray, colourfulness: float = 0.0) -> CXRImage:
    h, w = pixels.shape
    meta = ImageMeta(format="PNG", original_size=(w, h), bit_depth=8, photometric="MONOCHROME2",
                     colourfulness=colourfulness)
    return CXRImage(pixels=np.clip(pixels, 0, 1).astype(np.float32), meta=meta)


# --- statistics (no network) -------------------------------------------------------------------------


def _features(n: int, off_subspace: float = 0.0, seed: int = 0) -> np.ndarray:
    """In-distribution: 8-d structure in 64-d plus small noise; OOD: extra noise off that subspace."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(8, 64))
    x = rng.normal(size=(n, 8)) @ basis + (0.1 + off_subspace) * rng.normal(size=(n, 64)) + 20.0
    return np.maximum(x, 0.0) ** 2  # the score takes sqrt of the (non-negative) embedding


def test_stats_separate_shifted_features_and_round_trip(tmp_path):
    train, val = _features(400, seed=0), _features(200, seed=1)
    stats = ood.OODStats.fit(train, n_components=8)
    raw_val = stats.raw_scores(val)
    assert 1.0 < float(np.median(raw_val)) < 4.0  # ~2 for in-distribution data
    stats.threshold = float(np.quantile(raw_val, 0.995)) * 1.15
    assert (stats.scores(_features(200, seed=2)) > 1.0).mean() < 0.02
    assert (stats.scores(_features(200, off_subspace=1.0, seed=3)) > 1.0).mean() > 0.95
    path = tmp_path / "ood.npz"
    stats.save(path)
    back = ood.OODStats.load(path)
    np.testing.assert_allclose(back.scores(val), stats.scores(val), rtol=1e-4)
    assert path.stat().st_size < 2 * 2**20


def test_fit_refuses_too_few_images():
    with pytest.raises(ValueError, match="need more than"):
        ood.OODStats.fit(_features(10), n_components=16)


def test_missing_weights_skip_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    assert ood.load_stats() is None and not ood.available()
    with pytest.raises(FileNotFoundError, match="ood fit"):
        ood.is_chest_xray(as_image(chest_phantom(256)))
    rep = quality.assess(as_image(chest_phantom(256)))
    assert rep.plausibility is None and rep.verdict == "pass", rep.reasons
    # a photograph still fails on colour alone
    assert "colourfulness" in quality.assess(as_image(chest_phantom(256), 0.3)).failed


def test_corrupt_weights_file_is_ignored(tmp_path, monkeypatch):
    (tmp_path / "ood.npz").write_bytes(b"not an npz file")
    monkeypatch.setattr(settings, "WEIGHTS_DIR", tmp_path)
    assert ood.load_stats() is None
    assert quality.assess(as_image(chest_phantom(256))).plausibility is None


def test_training_filter_path_never_runs_the_network(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network must not run with check_plausibility=False")

    monkeypatch.setattr(ood, "embed_images", boom)
    monkeypatch.setattr(ood, "is_chest_xray", boom)
    rep = quality.assess(as_image(chest_phantom(256)), check_plausibility=False)
    assert rep.plausibility is None and rep.ok


def test_a_failing_check_never_breaks_assess(monkeypatch):
    def broken(image, stats=None):
        raise RuntimeError("backbone exploded")

    monkeypatch.setattr(ood, "available", lambda path=None: True)
    monkeypatch.setattr(ood, "is_chest_xray", broken)
    rep = quality.assess(as_image(chest_phantom(256)))
    assert rep.ok and rep.plausibility is None


def test_implausible_result_fails_with_plain_reason_first(monkeypatch):
    monkeypatch.setattr(ood, "available", lambda path=None: True)
    monkeypatch.setattr(ood, "is_chest_xray", lambda image: (False, 3.2, "its content is unlike chest radiographs"))
    rep = quality.assess(as_image(chest_phantom(256)))
    assert rep.verdict == "fail" and not rep.ok
    assert rep.reasons[0] == "This does not look like a frontal chest X-ray (its content is unlike chest radiographs)."
    assert rep.failed[0] == quality.PLAUSIBILITY and rep.plausibility == 3.2
    monkeypatch.setattr(ood, "is_chest_xray", lambda image: (True, 0.4, ""))
    rep = quality.assess(as_image(chest_phantom(256)))
    assert rep.verdict == "pass" and rep.plausibility == 0.4


def test_classify_abstains_when_not_a_chest_xray(monkeypatch):
    from torch import nn

    from cxr_core import classify
    from cxr_core.models import SPECS, Classifier

    monkeypatch.setattr(ood, "available", lambda path=None: True)
    monkeypatch.setattr(ood, "is_chest_xray", lambda image: (False, 5.0, "it looks like a document"))
    image = as_image(chest_phantom(256))
    rep = quality.assess(image)
    tiny = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)).eval()
    pred = classify.predict(image, Classifier("vbreathnet", SPECS["vbreathnet"], tiny, 64, 1.0), quality=rep)
    assert pred.abstained
    assert any("does not look like a frontal chest X-ray" in r for r in pred.reasons)


@pytest.fixture(scope="module")
def non_cxr():
    """The offline non-CXR inputs (3 per kind), made once for the module."""
    return ood_inputs.non_cxr_inputs(seed=11, per_kind=3)


def test_non_cxr_generators_make_decodable_images(non_cxr):
    kinds = non_cxr
    for kind in ("photo_colour", "photo_grey", "text", "noise", "gradient", "pattern", "hand", "skull"):
        assert kinds.get(kind), kind
        for im in kinds[kind]:
            assert isinstance(im, CXRImage) and im.pixels.ndim == 2
    assert all(im.meta.colourfulness > 0.05 for im in kinds["photo_colour"][:1])


# --- with the fitted statistics --------------------------------------------------------------------------


@requires_ood
def test_shipped_statistics_are_small_and_documented():
    path = ood.weights_file()
    assert path.stat().st_size < 2 * 2**20
    stats = ood.load_stats()
    assert np.isfinite(stats.threshold) and stats.threshold > 0
    info = stats.info
    assert info["fit_counts"] and info["val_counts"] and "threshold_rule" in info
    assert info["val_false_rejection"] < 0.01


@requires_ood
@pytest.mark.parametrize("kind", ["text", "noise", "pattern", "gradient", "photo_grey", "photo_colour"])
def test_non_chest_images_are_refused_by_the_quality_gate(kind, non_cxr):
    images = non_cxr[kind][:3]
    for im in images:
        rep = quality.assess(im)
        assert not rep.ok, (kind, rep.plausibility)
        assert rep.reasons[0].startswith(NOT_CXR), (kind, rep.reasons)
        plausible, score, reason = ood.is_chest_xray(im)
        assert not plausible and reason


@requires_ood
def test_colour_photo_reason_mentions_colour():
    flower = ood_inputs._photos()[1] if len(ood_inputs._photos()) > 1 else None
    if flower is None:
        pytest.skip("scikit-learn sample images not available")
    im = load_image(encode(flower, "PNG"))
    ok, score, reason = ood.is_chest_xray(im)
    assert not ok and "colour" in reason


@requires_ood
def test_synthetic_chest_phantom_is_not_taken_for_a_real_radiograph():
    # The test phantom (tests/conftest.py) is a cartoon of a chest: real CXRs score <= ~0.95,
    # the phantom ~1.8, like the other synthetic non-CXRs. Tests of the quality *metrics* on the
    # phantom therefore run without the plausibility check (tests/gate/test_quality.py).
    ok, score, reason = ood.is_chest_xray(as_image(chest_phantom(256, 0)))
    assert not ok and score > 1.0 and reason
    rep = quality.assess(as_image(chest_phantom(256, 0)))
    assert rep.plausibility == pytest.approx(score) and rep.failed == (quality.PLAUSIBILITY,)


@requires_ood
def test_backbone_loaded_once_per_process():
    ood._backbone_cached.cache_clear()
    for seed in range(3):
        ood.is_chest_xray(as_image(chest_phantom(224, seed)))
    info = ood._backbone_cached.cache_info()
    assert info.misses == 1 and info.hits >= 2


@requires_ood
def test_cli_check_exit_codes(tmp_path, capsys):
    doc = tmp_path / "letter.png"
    doc.write_bytes(encode(ood_inputs._text_page(np.random.default_rng(0)), "PNG"))
    assert ood.main(["check", str(doc)]) == 1
    assert "NOT a chest X-ray" in capsys.readouterr().out
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"hello")
    assert ood.main(["check", str(bad)]) == 1
    assert "unreadable" in capsys.readouterr().out
    rows = cxr3_rows("test", 1, seed=9)
    if rows:
        assert ood.main(["check", str(settings.CXR3_DIR / rows[0]["path"])]) == 0
        assert "chest X-ray" in capsys.readouterr().out


@requires_ood
@requires_cxr3
def test_real_cxr3_test_images_are_accepted():
    rows = cxr3_rows("test", 24, seed=5)
    images = [load_image(settings.CXR3_DIR / r["path"]) for r in rows]
    scores = ood.load_stats().scores(ood.embed_images(images))
    assert (scores <= 1.0).all(), [(r["path"], float(s)) for r, s in zip(rows, scores) if s > 1.0]


@requires_ood
def test_external_hospital_images_are_accepted():
    paths = ood.real_cxr_paths("vinbigdata", "all")[:6] + ood.real_cxr_paths("lungseg", "test")[:6]
    if not paths:
        pytest.skip(f"VinBigData / lungseg not found under {settings.DATA_DIR}")
    for p in paths:
        ok, score, reason = ood.is_chest_xray(load_image(p))
        assert ok, (p.name, score, reason)


def test_shipped_metrics_meet_the_target():
    path = settings.WEIGHTS_DIR / "ood_metrics.json"
    if not path.is_file():
        pytest.skip(f"{path} not found; run: python -m cxr_core.ood evaluate --out weights/ood_metrics.json")
    res = json.loads(path.read_text())
    real = res["real_cxr_false_rejection"]
    assert {"cxr3", "lungseg", "tbx11k", "vinbigdata"} <= set(real)
    for name, entry in real.items():
        assert entry["rate"] < 0.01, (name, entry)
    detection = res["non_cxr_detection"]
    for kind in ("photo_colour", "photo_grey", "text", "noise", "gradient", "pattern"):
        assert detection[kind]["rate"] >= 0.9, (kind, detection[kind])
    assert detection["all"]["rate"] >= 0.9
