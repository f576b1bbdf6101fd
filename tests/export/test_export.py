"""ONNX export, int8 calibration rules and the ONNX Runtime backend (cxr_core.export, docs/export.md).

Round trips run on a tiny V-BreathNet the test builds (64 px, random weights, in tmp_path) and on
the committed weights/vbreathnet.pt (exported again into tmp_path). The committed
weights/onnx/vbreathnet*.onnx files are checked against the current .pt when present.
Nothing here is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import chest_phantom, encode, requires_cxr3, to_uint8  # noqa: E402

from cxr_core import pipeline, settings  # noqa: E402
from cxr_core.export import backend, quantise, to_onnx  # noqa: E402
from cxr_core.models import Classifier, freeze, load_classifier, weights_path  # noqa: E402
from cxr_core.models.vbreathnet import VBreathNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CARD_FIELDS = ("name", "file", "source_weights", "opset", "input", "output", "temperature", "abstain_threshold",
               "check", "command", "versions")
HAS_VB = weights_path("vbreathnet").is_file()


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def films_from_phantoms(family: str, size: int, n: int = 6, split: str = "test") -> to_onnx.FilmSet:
    from cxr_core.preprocess import standardise

    std = np.stack([standardise(chest_phantom(96, seed=i), size) for i in range(n)])
    return to_onnx.FilmSet(split=split, std=std, labels=np.arange(n) % 3, files=[f"phantom{i}" for i in range(n)],
                           age_groups=[None] * n, family=family, seed=0, data="chest phantoms (test)")


@pytest.fixture
def tiny(tmp_path, monkeypatch, one_thread) -> Classifier:
    """A 64 px V-BreathNet with random (but not default) BatchNorm statistics, saved as weights/vbreathnet.pt
    in a temporary weights folder (settings.WEIGHTS_DIR points there), with a card threshold."""
    torch.manual_seed(0)
    net = VBreathNet(num_classes=3, input_size=64)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    freeze(net)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setattr(settings, "WEIGHTS_DIR", wdir)
    torch.save({"state_dict": net.state_dict(), "input_size": 64, "temperature": 1.7}, wdir / "vbreathnet.pt")
    (wdir / "vbreathnet.json").write_text(json.dumps({"name": "vbreathnet", "calibration": {"abstain_threshold": 0.55}}))
    load_classifier.cache_clear()
    backend._load_onnx.cache_clear()
    yield load_classifier("vbreathnet")
    load_classifier.cache_clear()
    backend._load_onnx.cache_clear()


def test_tiny_round_trip_and_card(tiny, tmp_path):
    films = films_from_phantoms("vbreathnet", 64)
    path, card = to_onnx.export_classifier(tiny, films=films, log=lambda m: None)
    assert path == settings.WEIGHTS_DIR / "onnx" / "vbreathnet.onnx" and path.is_file()
    for key in CARD_FIELDS:
        assert key in card, key
    on_disk = json.loads(to_onnx.card_path_for(path).read_text())
    assert on_disk == card
    assert card["temperature"] == pytest.approx(1.7)
    assert card["abstain_threshold"] == pytest.approx(0.55)
    assert card["input"]["size"] == 64 and card["input"]["family"] == "vbreathnet"
    assert card["input"]["mean"] == [0.5, 0.5, 0.5]
    assert card["output"]["class_order"] == list(settings.CLASSES)
    assert card["opset"] == to_onnx.OPSET
    assert card["source_weights"]["sha256"] == to_onnx.sha256_file(settings.WEIGHTS_DIR / "vbreathnet.pt")
    assert card["file"]["sha256"] == to_onnx.sha256_file(path) and card["file"]["bytes"] == path.stat().st_size
    assert card["check"]["films"]["split"] == "test" and card["check"]["n"] == len(films)
    assert card["check"]["max_abs_prob_diff"] < to_onnx.FP32_PROB_TOLERANCE

    # ONNX Runtime output equals PyTorch on a batch the check did not see (dynamic batch axis)
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (5, 3, 64, 64)).astype(np.float32))
    sess = to_onnx.session(path)
    with torch.inference_mode():
        ref = tiny.model(x).numpy()
    got = to_onnx.run_session(sess, x)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_backend_switch_changes_nothing_beyond_tolerance(tiny):
    to_onnx.export_classifier(tiny, films=None, log=lambda m: None)
    png = encode(to_uint8(chest_phantom(160, seed=3)), "PNG")
    a_torch = pipeline.analyse(png, classifier=backend.load("vbreathnet", "torch"))
    onnx_clf = backend.load("vbreathnet", "onnx", threads=1)
    assert isinstance(onnx_clf, backend.OnnxClassifier) and backend.backend_of(onnx_clf) == "onnx"
    assert backend.heatmap_note(onnx_clf) and backend.heatmap_note(a_torch.classifier) is None
    a_onnx = pipeline.analyse(png, classifier=onnx_clf)
    p_t, p_o = a_torch.prediction, a_onnx.prediction
    assert p_o.predicted == p_t.predicted and p_o.abstained == p_t.abstained
    assert p_o.temperature == p_t.temperature
    for c in settings.CLASSES:
        assert abs(p_o.probabilities[c] - p_t.probabilities[c]) < to_onnx.FP32_PROB_TOLERANCE
    # the forward pass really went through ONNX Runtime: a session that answers something else shows
    class Fake:
        def run(self, names, feeds):
            return [np.tile(np.array([[0.0, 0.0, 9.0]], np.float32), (len(feeds["input"]), 1))]

    fake = backend.OrtModule(Fake(), tiny.model, "input", "logits")
    with torch.inference_mode():
        assert fake(torch.zeros(2, 3, 64, 64)).argmax(1).tolist() == [2, 2]
    # ... and outside inference mode (Grad-CAM) the PyTorch twin answers, with gradients
    x = torch.zeros(1, 3, 64, 64)
    assert torch.allclose(fake(x), tiny.model(x))
    assert fake.cam_layer is tiny.model.cam_layer


def test_heatmap_of_onnx_classifier_uses_torch_twin(tiny):
    to_onnx.export_classifier(tiny, films=None, log=lambda m: None)
    png = encode(to_uint8(chest_phantom(128, seed=4)), "PNG")
    h_t = pipeline.analyse(png, classifier=backend.load("vbreathnet", "torch")).heatmap()
    h_o = pipeline.analyse(png, classifier=backend.load("vbreathnet", "onnx", threads=1)).heatmap()
    assert h_o.target == h_t.target
    np.testing.assert_allclose(h_o.map, h_t.map, atol=1e-5)


def test_stale_export_is_refused(tiny):
    to_onnx.export_classifier(tiny, films=None, log=lambda m: None)
    state = torch.load(settings.WEIGHTS_DIR / "vbreathnet.pt", weights_only=True)
    state["state_dict"]["classifier.5.bias"] = state["state_dict"]["classifier.5.bias"] + 1.0  # "retrained"
    torch.save(state, settings.WEIGHTS_DIR / "vbreathnet.pt")
    load_classifier.cache_clear()
    with pytest.raises(backend.StaleExportError, match="python -m cxr_core.export --model vbreathnet"):
        backend.load("vbreathnet", "onnx")
    with pytest.raises(backend.ModelUnavailableError, match="--int8"):
        backend.load("vbreathnet", "onnx-int8")  # never exported
    with pytest.raises(ValueError, match="Unknown backend"):
        backend.load("vbreathnet", "tensorrt")


def test_int8_calibration_refuses_test_split(tiny):
    with pytest.raises(quantise.CalibrationSplitError, match="refuses the test split"):
        quantise.calibration_films(tiny, "test")
    with pytest.raises(quantise.CalibrationSplitError, match="validation split only"):
        quantise.calibration_films(tiny, "train")
    path, _ = to_onnx.export_classifier(tiny, films=None, log=lambda m: None)
    with pytest.raises(quantise.CalibrationSplitError, match="refuses the test split"):
        quantise.quantise_file(path, path.with_name("x.int8.onnx"), films_from_phantoms("vbreathnet", 64))
    assert not path.with_name("x.int8.onnx").exists()


def test_int8_on_tiny_model(tiny):
    path, _ = to_onnx.export_classifier(tiny, films=None, log=lambda m: None)
    calib = films_from_phantoms("vbreathnet", 64, n=8, split="val")
    qpath, card = quantise.quantise_classifier(tiny, path, calib=calib, films=films_from_phantoms("vbreathnet", 64),
                                               log=lambda m: None)
    assert qpath.name == "vbreathnet.int8.onnx" and qpath.stat().st_size < path.stat().st_size
    assert card["quantisation"]["calibration_films"]["split"] == "val"
    assert card["quantisation"]["kept_float"], "the first convolution is kept float"
    assert card["fp32_file"]["sha256"] == to_onnx.sha256_file(path)
    assert "within_half_point_of_torch_accuracy" in card["check"]
    clf = backend.load("vbreathnet", "onnx-int8", threads=1)
    pred = pipeline.analyse(encode(to_uint8(chest_phantom(128, seed=5)), "PNG"), classifier=clf).prediction
    assert abs(sum(pred.probabilities.values()) - 1.0) < 1e-5


def test_cli_help():
    for mod in ("cxr_core.export", "cxr_core.export.bench"):
        res = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "usage:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "cxr_core", "classify", "export", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "--int8" in res.stdout, res.stderr


def test_cli_refuses_test_split_before_work():
    from cxr_core.export.__main__ import main

    assert main(["--model", "vbreathnet", "--int8", "--calib-split", "test"]) == 2


def test_predict_and_batch_default_backend_is_torch():
    from cxr_core.batch.cli import build_parser
    from cxr_core.batch.run import BatchConfig

    assert build_parser().parse_args(["in", "--out", "o"]).backend == "torch"
    assert BatchConfig(input="in", out=Path("o")).backend == "torch"


@pytest.mark.skipif(not HAS_VB, reason="weights/vbreathnet.pt is not in this checkout")
def test_committed_vbreathnet_round_trip(tmp_path, one_thread):
    clf = load_classifier("vbreathnet")
    _, card = to_onnx.export_classifier(clf, tmp_path, films=films_from_phantoms("vbreathnet", clf.input_size),
                                        log=lambda m: None)
    assert card["check"]["max_abs_prob_diff"] < to_onnx.FP32_PROB_TOLERANCE
    onnx_clf = backend.load("vbreathnet", "onnx", threads=1, onnx_dir=tmp_path)
    png = encode(to_uint8(chest_phantom(200, seed=7)), "PNG")
    p_t = pipeline.analyse(png, classifier=clf).prediction
    p_o = pipeline.analyse(png, classifier=onnx_clf).prediction
    assert (p_o.predicted, p_o.abstained) == (p_t.predicted, p_t.abstained)
    assert max(abs(p_o.probabilities[c] - p_t.probabilities[c]) for c in settings.CLASSES) < to_onnx.FP32_PROB_TOLERANCE


@requires_cxr3
@pytest.mark.skipif(not HAS_VB, reason="weights/vbreathnet.pt is not in this checkout")
def test_committed_onnx_files_match_current_weights(one_thread):
    """weights/onnx/vbreathnet{,.int8}.onnx: made from the current .pt, and their cards' checks hold.
    A retrained weights/vbreathnet.pt fails this until it is exported again (see the message)."""
    from conftest import cxr3_rows

    from cxr_core.io import load_image

    for b in ("onnx", "onnx-int8"):
        f = backend.onnx_file("vbreathnet", b)
        if not f.is_file():
            pytest.skip(f"{f} not exported in this checkout")
        card = to_onnx.read_onnx_card(f)
        assert card is not None and all(k in card for k in CARD_FIELDS)
        assert card["source_weights"]["sha256"] == to_onnx.sha256_file(weights_path("vbreathnet")), (
            f"{f.name} is stale: run python -m cxr_core.export --model vbreathnet --int8")
        assert card["file"]["sha256"] == to_onnx.sha256_file(f)
        assert card["check"]["films"]["split"] == "test"
        if b == "onnx":
            assert card["check"]["max_abs_prob_diff"] < to_onnx.FP32_PROB_TOLERANCE
        else:
            assert card["quantisation"]["calibration_films"]["split"] == "val"
            assert f.stat().st_size < 1_000_000
    clf = load_classifier("vbreathnet")
    onnx_clf = backend.load("vbreathnet", "onnx", threads=1)
    for row in cxr3_rows("test", n=4):
        img = load_image(settings.CXR3_DIR / row["path"])
        p_t = pipeline.analyse(img, classifier=clf).prediction
        p_o = pipeline.analyse(img, classifier=onnx_clf).prediction
        assert p_o.predicted == p_t.predicted
        assert max(abs(p_o.probabilities[c] - p_t.probabilities[c]) for c in settings.CLASSES) < to_onnx.FP32_PROB_TOLERANCE
