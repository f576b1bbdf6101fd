"""cxr_core.detect: label fusion/rescaling, dataset preparation (shared subset and the full
Kaggle DICOM layout), the offline guarantee of ultralytics, evaluation JSON and inference.

Tests that need the real data in ../shared skip with a reason when it is absent. The tiny
training run trains 1 epoch on 6 real images at 64 px (a few seconds) with every network
entry point patched to raise.
"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_dicom
from cxr_core import settings
from cxr_core.boxes import Box
from cxr_core.detect import prepare as P

VINBIG_OK = (settings.VINBIG_DIR / "labels.csv").is_file() and (settings.VINBIG_DIR / "images").is_dir()
TBX_OK = (settings.TBX11K_DIR / "labels.csv").is_file()
PRETRAINED_OK = settings.YOLO_PRETRAINED.is_file()
requires_vinbig = pytest.mark.skipif(
    not VINBIG_OK, reason=f"VinBigData subset not found at {settings.VINBIG_DIR} (set CXR_SHARED_DIR)"
)
requires_training_data = pytest.mark.skipif(
    not (VINBIG_OK and TBX_OK and PRETRAINED_OK),
    reason="needs ../shared VinBigData + TBX11K data and the pretrained YOLO checkpoint (set CXR_SHARED_DIR)",
)
requires_weights = pytest.mark.skipif(
    not settings.DETECTOR_WEIGHTS.is_file(), reason=f"no trained detector at {settings.DETECTOR_WEIGHTS}"
)


# --- label transforms --------------------------------------------------------------------------


def _rows(boxes):
    return pd.DataFrame(boxes, columns=["class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])


def test_wbf_fuses_three_radiologists_into_one_box():
    rows = _rows([
        (3, "R1", 100, 200, 300, 400),
        (3, "R2", 110, 210, 310, 410),
        (3, "R3", 90, 190, 290, 390),
        (3, "R2", 800, 800, 900, 900),  # same class, elsewhere: stays separate
        (7, "R1", 105, 205, 305, 405),  # other class on the same spot: never fused across classes
        (14, "R3", np.nan, np.nan, np.nan, np.nan),  # "No finding" row: ignored
    ])
    fused = P.fuse_radiologists(rows, width=1000, height=1000, iou_thr=0.6)
    assert [b.class_id for b in fused] == [3, 3, 7]
    main = fused[0]
    assert (main.x0, main.y0, main.x1, main.y1) == pytest.approx((100, 200, 300, 400), abs=0.5)
    assert (fused[1].x0, fused[1].y0) == pytest.approx((800, 800), abs=0.5)
    assert (fused[2].x0, fused[2].x1) == pytest.approx((105, 305), abs=0.5)


def test_wbf_keeps_non_overlapping_boxes_and_handles_empty():
    rows = _rows([(10, "R1", 0, 0, 100, 100), (10, "R2", 500, 500, 700, 700)])
    assert len(P.fuse_radiologists(rows, 1000, 1000)) == 2
    assert P.fuse_radiologists(_rows([(14, "R1", np.nan, np.nan, np.nan, np.nan)]), 1000, 1000) == []


def test_rescale_and_yolo_lines():
    boxes = [Box(1000, 500, 2000, 1500, class_id=2), Box(-10, 2900, 50, 3500, class_id=1)]
    out = P.rescale_boxes(boxes, orig_size=(3000, 3000), stored_size=(512, 512))
    assert out[0].x0 == pytest.approx(1000 * 512 / 3000)
    assert out[0].y1 == pytest.approx(1500 * 512 / 3000)
    assert out[1].x0 == 0 and out[1].y1 == 512  # clipped to the image
    line = P.yolo_lines([Box(0, 0, 256, 128, class_id=5)], (512, 256))[0].split()
    assert line[0] == "5" and [float(v) for v in line[1:]] == pytest.approx([0.25, 0.25, 0.5, 0.5])


def test_hash_split_is_deterministic_and_roughly_80_10_10():
    ids = [f"img{i}" for i in range(2000)]
    splits = [P.hash_split(i) for i in ids]
    assert splits == [P.hash_split(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in P.SPLITS}
    assert 0.75 < frac["train"] < 0.85 and 0.07 < frac["val"] < 0.13 and 0.07 < frac["test"] < 0.13


# --- dataset preparation ---------------------------------------------------------------------


@requires_vinbig
def test_prepare_shared_no_finding_images_get_empty_labels(tmp_path):
    info = P.prepare_shared(tmp_path / "ds", settings.VINBIG_DIR, tbx_dir=None)
    labels = pd.read_csv(settings.VINBIG_DIR / "labels.csv")
    per_image = labels.groupby("image_id")
    assert sum(info["splits"][s]["images"] for s in P.SPLITS) == per_image.ngroups == 12
    for image_id, rows in per_image:
        split = rows["split"].iloc[0]
        lbl = tmp_path / "ds" / "labels" / split / f"{image_id}.txt"
        img = tmp_path / "ds" / "images" / split / f"{image_id}.jpg"
        assert lbl.is_file() and img.exists()
        text = lbl.read_text()
        if (rows["class_id"] == 14).all():
            assert text == ""  # background image
        else:
            lines = [line.split() for line in text.splitlines()]
            assert lines and all(len(v) == 5 and 0 <= int(v[0]) < 14 for v in lines)
            assert all(0 <= float(x) <= 1 for v in lines for x in v[1:])
            # fusion: never more boxes than the radiologists drew, usually fewer
            assert len(lines) <= (rows["class_id"] != 14).sum()
    assert info["splits"]["test"]["images"] == 1 and info["splits"]["val"]["images"] == 1
    data = (tmp_path / "ds" / "data.yaml").read_text()
    assert "Active tuberculosis" in data and "Pulmonary fibrosis" in data


def _kaggle_folder(root: Path, ids: list[str]) -> pd.DataFrame:
    """A tiny fake Kaggle download built from real images: train.csv + train/<id>.dicom.

    DICOMs are written at twice the JPEG size as 12-bit data with a VOI window, one of them
    MONOCHROME1 (inverted), and train.csv holds the boxes rescaled to the DICOM's pixels."""
    labels = pd.read_csv(settings.VINBIG_DIR / "labels.csv")
    (root / "train").mkdir(parents=True)
    rows = []
    for k, image_id in enumerate(ids):
        jpg = np.asarray(Image.open(settings.VINBIG_DIR / "images" / f"{image_id}.jpg").convert("L"))
        big = np.asarray(Image.fromarray(jpg).resize((jpg.shape[1] * 2, jpg.shape[0] * 2), Image.BILINEAR))
        px = big.astype(np.uint16) * 16  # 12-bit range
        mono1 = k == 0
        if mono1:
            px = 4095 - px
        (root / "train" / f"{image_id}.dicom").write_bytes(
            make_dicom(px, photometric="MONOCHROME1" if mono1 else "MONOCHROME2", bits_stored=12,
                       WindowCenter=2048, WindowWidth=4096)
        )
        sub = labels[labels["image_id"] == image_id]
        fx = big.shape[1] / sub["orig_width"].iloc[0]
        fy = big.shape[0] / sub["orig_height"].iloc[0]
        for r in sub.itertuples():
            rows.append(dict(image_id=image_id, class_name=r.class_name, class_id=r.class_id, rad_id=r.rad_id,
                             x_min=r.x_min * fx, y_min=r.y_min * fy, x_max=r.x_max * fx, y_max=r.y_max * fy))
    df = pd.DataFrame(rows)
    df.to_csv(root / "train.csv", index=False)
    return labels


@requires_vinbig
def test_prepare_kaggle_dicom_layout_end_to_end(tmp_path):
    labels = pd.read_csv(settings.VINBIG_DIR / "labels.csv")
    abnormal = sorted(labels.loc[labels["class_id"] != 14, "image_id"].unique())[:2]
    normal = sorted(labels.loc[labels["class_id"] == 14, "image_id"].unique())[:1]
    ids = abnormal + normal
    _kaggle_folder(tmp_path / "kaggle", ids)
    assert P.is_kaggle_layout(tmp_path / "kaggle")
    out = tmp_path / "ds"
    info = P.prepare_kaggle(tmp_path / "kaggle", out, tbx_dir=None, side=512)
    shared = P.prepare_shared(tmp_path / "shared_ds", settings.VINBIG_DIR, tbx_dir=None)
    assert sum(info["splits"][s]["images"] for s in P.SPLITS) == 3
    assert shared["splits"]["train"]["images"] == 10
    for image_id in ids:
        split = P.hash_split(image_id)
        img = out / "images" / split / f"{image_id}.jpg"
        lbl = out / "labels" / split / f"{image_id}.txt"
        assert img.exists() and lbl.is_file()
        stored = np.asarray(Image.open(img).convert("L"), np.float32)
        ref = np.asarray(Image.open(settings.VINBIG_DIR / "images" / f"{image_id}.jpg").convert("L"), np.float32)
        assert stored.shape == ref.shape  # long side 512, aspect kept
        # VOI LUT + MONOCHROME1 handled by cxr_core.io: the picture is the original one, not inverted
        assert np.corrcoef(stored.ravel(), ref.ravel())[0, 1] > 0.95
        got = sorted(lbl.read_text().splitlines())
        ref_split = labels.loc[labels["image_id"] == image_id, "split"].iloc[0]
        want = sorted((tmp_path / "shared_ds" / "labels" / ref_split / f"{image_id}.txt").read_text().splitlines())
        assert len(got) == len(want)
        for g, w in zip(got, want):  # same fused boxes as the shared path, up to rounding
            g, w = g.split(), w.split()
            assert g[0] == w[0] and [float(x) for x in g[1:]] == pytest.approx([float(x) for x in w[1:]], abs=0.01)
        if image_id in normal:
            assert got == []
    # a second run reuses the converted JPEGs (resume)
    again = P.prepare_kaggle(tmp_path / "kaggle", out, tbx_dir=None, side=512)
    assert again["splits"] == info["splits"]


def test_cli_help_lists_commands(capsys):
    from cxr_core.detect.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for cmd in ("prepare", "train", "evaluate", "figures", "detect"):
        assert cmd in text


# --- offline guarantee + a tiny real training run ---------------------------------------------


class _NetworkUsed(AssertionError):
    pass


def _deny_network(mp: pytest.MonkeyPatch) -> list:
    """Patch every way ultralytics could reach the network to raise; returns the list of attempts."""
    calls: list = []

    def _deny(name):
        def f(*a, **k):
            calls.append((name, repr(a[:2])))
            raise _NetworkUsed(f"network call attempted: {name} {a[:2]}")

        return f

    mp.setattr(socket.socket, "connect", _deny("socket.connect"))
    mp.setattr(socket.socket, "connect_ex", _deny("socket.connect_ex"))
    mp.setattr(socket, "create_connection", _deny("socket.create_connection"))
    mp.setattr(socket, "getaddrinfo", _deny("socket.getaddrinfo"))
    mp.setattr(urllib.request, "urlopen", _deny("urllib.urlopen"))
    try:
        import requests

        mp.setattr(requests.Session, "request", _deny("requests"))
    except ImportError:  # pragma: no cover
        pass
    return calls


@pytest.fixture
def no_network(monkeypatch):
    return _deny_network(monkeypatch)


def _tiny_dataset(root: Path) -> Path:
    """6 real images (4 TBX11K train, 1 val, 1 test) linked from the prepared layout."""
    tb = pd.read_csv(settings.TBX11K_DIR / "labels.csv")
    picks = {"train": sorted(tb.loc[tb.split == "train", "image_id"].unique())[:4],
             "val": sorted(tb.loc[tb.split == "val", "image_id"].unique())[:1],
             "test": sorted(tb.loc[tb.split == "test", "image_id"].unique())[:1]}
    for split, ids in picks.items():
        for image_id in ids:
            rows = tb[tb.image_id == image_id]
            src = settings.TBX11K_DIR / "images" / f"{image_id}.jpg"
            stored = Image.open(src).size
            boxes = [Box(r.x_min, r.y_min, r.x_max, r.y_max, class_id=P.TB_SOURCE_TO_ID[r.source_class])
                     for r in rows.itertuples()]
            boxes = P.rescale_boxes(boxes, (rows.orig_width.iloc[0], rows.orig_height.iloc[0]), stored)
            P._link(src, root / "images" / split / f"{image_id}.jpg")
            P._write_label(root, split, image_id, P.yolo_lines(boxes, stored))
    return P.write_data_yaml(root)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Train 1 epoch at 64 px on the tiny set, with all network access patched to raise."""
    if not (TBX_OK and PRETRAINED_OK):
        pytest.skip("needs ../shared TBX11K data and the pretrained YOLO checkpoint (set CXR_SHARED_DIR)")
    mp = pytest.MonkeyPatch()
    calls = _deny_network(mp)
    root = tmp_path_factory.mktemp("tiny")
    data = _tiny_dataset(root / "ds")
    from cxr_core.detect import train as T

    try:
        rdir = T.train(None, data=str(data), project=str(root / "runs"), name="tiny", epochs=1, imgsz=64,
                       batch=4, cache=False, time=None)
        weights = T.export(rdir, root / "detector.pt", select=False)
        YOLO = __import__("cxr_core.detect.predict", fromlist=["x"]).ultralytics_offline()
        res = YOLO(str(weights)).predict(str(next((root / "ds" / "images" / "test").iterdir())),
                                         imgsz=64, device="cpu", verbose=False)
    finally:
        mp.undo()
    return {"weights": weights, "data": data, "calls": calls, "results": res, "run": rdir}


def test_train_and_predict_make_no_network_call(tiny_run):
    assert tiny_run["calls"] == []
    assert tiny_run["weights"].is_file() and tiny_run["weights"].stat().st_size < 25 * 2**20
    assert len(tiny_run["results"]) == 1
    import ultralytics.utils

    assert ultralytics.utils.ONLINE is False
    from ultralytics import settings as us

    assert us["sync"] is False


def test_evaluate_json_fields_on_tiny_set(tiny_run, no_network):
    from cxr_core.detect.val import evaluate

    m = evaluate(tiny_run["weights"], split="test", data=tiny_run["data"], conf=0.25, imgsz=64)
    for key in ("map40", "map50", "tb_ap40", "per_class", "precision", "recall", "f1", "n_images", "threshold",
                "validated_classes"):
        assert key in m
    assert m["n_images"] == 1 and m["threshold"] == 0.25
    assert m["iou_thresholds"] == [0.4, 0.5]
    names = [row["name"] for row in m["per_class"]]
    assert names == list(settings.DETECTOR_CLASSES)  # every class reported, none hidden
    for row in m["per_class"]:
        assert {"support_boxes", "support_images", "ap40", "ap50", "validated"} <= set(row)
        if row["support_boxes"] == 0:
            assert row["ap40"] is None and row["validated"] is False
        else:
            assert 0.0 <= row["ap40"] <= 1.0
    assert 0.0 <= m["map40"] <= 1.0 and 0.0 <= m["tb_ap40"] <= 1.0
    json.dumps(m)  # serialisable
    assert no_network == []


def test_evaluate_defaults_to_the_checkpoints_training_size(tiny_run, no_network):
    """A 512 px detector validated at another size would report numbers it never has in the app."""
    from cxr_core.detect.predict import trained_imgsz
    from cxr_core.detect.val import evaluate

    assert trained_imgsz(tiny_run["weights"]) == 64
    assert evaluate(tiny_run["weights"], split="test", data=tiny_run["data"], conf=0.25)["imgsz"] == 64


# --- inference API ---------------------------------------------------------------------------


def test_draw_boxes_colours_and_shape():
    from cxr_core.detect import Box, class_colour, draw_boxes

    rgb = np.zeros((200, 300, 3), np.uint8)
    boxes = [Box(10, 20, 120, 150, 14, "Active tuberculosis", 0.87, True),
             Box(150, 30, 290, 190, 3, "Cardiomegaly", 0.4, False)]
    out = draw_boxes(rgb, boxes)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and rgb.sum() == 0  # input untouched
    assert out.sum() > 0
    assert class_colour(14) == class_colour(14) and class_colour(14) != class_colour(3)
    assert tuple(out[100, 10]) == class_colour(14)  # left edge of the first box


@requires_weights
@requires_vinbig
def test_detect_on_real_image_returns_boxes_in_original_coordinates():
    from cxr_core.detect import Box, detect, load_detector
    from cxr_core.io import load_image

    assert load_detector() is load_detector()  # cached once per process
    tb_img = sorted((settings.TBX11K_DIR / "images").glob("*.jpg"))[0] if TBX_OK else None
    path = settings.VINBIG_DIR / "images" / "0c7a38f293d5f5e4846aa4ca6db4daf1.jpg"
    for p in [path] + ([tb_img] if tb_img else []):
        img = load_image(p)
        boxes = detect(img, conf=0.01)
        w, h = img.meta.original_size
        assert all(isinstance(b, Box) for b in boxes)
        for b in boxes:
            assert -1 <= b.x0 < b.x1 <= w + 1 and -1 <= b.y0 < b.y1 <= h + 1
            assert 0.01 <= b.confidence <= 1 and b.label == settings.DETECTOR_CLASSES[b.class_id]
            assert isinstance(b.validated, bool)
        only_tb = detect(img, conf=0.01, classes=list(settings.TB_CLASSES))
        assert all(b.label in settings.TB_CLASSES for b in only_tb)
    with pytest.raises(ValueError):
        detect(img, classes=["not a class"])


@requires_weights
def test_model_card_is_honest():
    card = json.loads(settings.DETECTOR_CARD.read_text())
    assert card["data"]["vinbigdata_images_per_split"]["train"] <= 12
    assert any("VinBigData" in line for line in card["limitations"])
    assert "tb_ap40" in card["metrics_test"] and card["code_version"]
    assert set(card["validated_classes"]) <= set(settings.DETECTOR_CLASSES)
    assert settings.DETECTOR_WEIGHTS.stat().st_size < 25 * 2**20
    from cxr_core.detect.predict import trained_imgsz

    # the card's numbers were measured at the size the app runs the detector at
    assert card["training"]["imgsz"] == json.loads(settings.DETECTOR_METRICS.read_text())["imgsz"] \
        == trained_imgsz()


def test_ultralytics_does_not_hijack_pil_open_for_uploads() -> None:
    """ultralytics patches PIL.Image.open to pip-install HEIF support on unknown files; after our offline
    import a damaged upload must still get cxr_core.io's specific message (no install attempt)."""
    from PIL import Image

    from cxr_core.detect.predict import ultralytics_offline
    from cxr_core.io import ImageLoadError, load_image

    ultralytics_offline()
    assert Image.open.__module__ == "PIL.Image"
    with pytest.raises(ImageLoadError, match="PNG file is damaged"):
        load_image(b"\x89PNG\r\n\x1a\n", "x.png")


def test_old_package_name_is_the_same_code() -> None:
    """`cxr_core.detection` (and its old submodule names) stay importable and are the new objects."""
    import cxr_core.detect as new
    import cxr_core.detection as old
    from cxr_core.detect import predict, val
    from cxr_core.detection.detect import Box
    from cxr_core.detection.evaluate import evaluate

    assert old is new and Box is predict.Box and evaluate is val.evaluate and old.detect is predict.detect


# --- operating point (issue #19): threshold rule, card default, figures, label placement ----------------------

CXR3_OK = settings.CXR3_MANIFEST.is_file()


def test_operating_point_is_the_lowest_threshold_meeting_both_targets():
    from cxr_core.detect.operating import choose_operating_point

    t = [0.5, 0.1, 0.2, 0.3, 0.4]  # unsorted on purpose
    precision = [None, 0.30, 0.55, 0.60, 0.70]
    fp = [0.0, 0.50, 0.20, 0.04, 0.01]
    op = choose_operating_point(t, precision, fp, fp_target=0.05, precision_target=0.5)
    assert op["threshold"] == 0.3 and op["targets_met"] and op["fp_target_met"]  # 0.2 has precision but too many FP
    assert "0.05" in op["rule"] and "0.5" in op["rule"]
    # a looser FP target lets the lower threshold through
    assert choose_operating_point(t, precision, fp, fp_target=0.25, precision_target=0.5)["threshold"] == 0.2


def test_operating_point_falls_back_to_the_false_positive_target():
    from cxr_core.detect.operating import choose_operating_point

    t = [0.1, 0.2, 0.3, 0.4]
    low_precision = [0.2, 0.3, 0.4, float("nan")]  # NaN / None (no box left) never meets the precision target
    op = choose_operating_point(t, low_precision, [0.5, 0.04, 0.02, 0.0], fp_target=0.05, precision_target=0.5)
    assert op["threshold"] == 0.2 and not op["targets_met"] and op["fp_target_met"]
    assert "No threshold meets both targets" in op["note"]
    op = choose_operating_point(t, [0.9] * 4, [0.5, 0.4, 0.3, 0.2], fp_target=0.05, precision_target=0.5)
    assert op["threshold"] == 0.4 and not op["targets_met"] and not op["fp_target_met"]  # highest of the grid
    assert "false-positive target" in op["note"]
    with pytest.raises(ValueError):
        choose_operating_point([0.1], [0.5, 0.6], [0.0])


def test_box_counts_on_normal_and_tb_films_per_threshold():
    from cxr_core.detect.operating import normal_film_rates, rate_interval, tb_boxes_per_film, tb_precision_recall

    tb, vin = settings.DETECTOR_CLASSES.index("Active tuberculosis"), 3
    films = [(np.array([0.9, 0.3, 0.2]), np.array([tb, tb, vin])), (np.array([]), np.array([], int)),
             (np.array([0.15]), np.array([tb + 1]))]
    r = normal_film_rates(films, [0.1, 0.25, 0.95])
    assert r["tb_fp_per_film"] == pytest.approx([3 / 3, 2 / 3, 0.0])
    assert r["films_with_tb_box"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert r["vinbig_boxes_per_film"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert list(tb_boxes_per_film(films, 0.25)) == [2, 0, 0]
    lo, hi = rate_interval(np.array([2, 0, 0]))
    assert 0 <= lo <= 2 / 3 <= hi <= 2
    pr = tb_precision_recall(np.array([0.9, 0.6, 0.3]), np.array([True, False, True]), 4, [0.2, 0.5, 0.95])
    assert pr["tb_boxes"] == [3, 2, 0]
    assert pr["precision"][:2] == pytest.approx([2 / 3, 0.5])
    assert pr["precision"][2] is None and pr["recall"] == pytest.approx([0.5, 0.25, 0.0])


def test_match_predictions_is_the_validators_greedy_matching():
    from cxr_core.detect.val import match_predictions

    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 31, 30], [50, 50, 60, 60]], np.float32)
    tp = match_predictions(pred, [0, 0, 1, 0], gt, [0, 0], (0.5,))[:, 0]
    assert list(tp) == [True, False, False, False]  # a duplicate is a false positive; classes must agree
    assert list(match_predictions(pred, [0, 0, 0, 0], gt, [0, 0], (0.5,))[:, 0]) == [True, False, True, False]
    assert match_predictions(np.zeros((0, 4)), [], gt, [0, 0]).shape == (0, 2)


def _card_with_op(threshold=0.31, best_f1=0.082):
    return {"operating_threshold": best_f1,
            "operating_point": {"threshold": threshold, "chosen_on": "val", "targets": {"fp_per_normal_film": 0.05,
                                "precision": 0.5}, "val": {"tb_precision": 0.94, "tb_recall": 0.54,
                                "tb_fp_per_normal_film": {"adult": 0.048, "paediatric": 0.02}}}}


def test_default_box_threshold_comes_from_the_cards_operating_point():
    from cxr_core import pipeline
    from cxr_core.detect.predict import default_threshold

    card = _card_with_op()
    assert default_threshold(card) == 0.31 == pipeline.detector_threshold(card)
    assert default_threshold({"operating_threshold": 0.082}) == 0.082  # older cards: best F1
    assert default_threshold({}) == settings.DETECTOR_CONF
    broken = {"operating_point": {"threshold": "n/a"}, "operating_threshold": 0.2}
    assert default_threshold(broken) == 0.2
    assert default_threshold({"operating_point": {"threshold": 0.01}}) == settings.DETECTOR_MIN_CONF
    assert pipeline.detector_threshold({}) == settings.DETECTOR_CONF


@pytest.mark.skipif(not settings.DETECTOR_CARD.is_file(), reason=f"no detector card at {settings.DETECTOR_CARD}")
def test_shipped_card_operating_point_is_the_apps_default():
    from cxr_core.detect.predict import default_threshold

    card = json.loads(settings.DETECTOR_CARD.read_text())
    op = card.get("operating_point")
    if op is None:
        pytest.skip("the shipped card has no operating_point yet (python -m cxr_core detect operating-point)")
    assert default_threshold() == default_threshold(card) == op["threshold"]
    for split in ("val", "test"):
        fp = op[split]["tb_fp_per_normal_film"]
        assert set(fp) == {"adult", "paediatric"} and op[split]["tb_precision"] is not None
    assert op["command"].startswith("python -m cxr_core detect operating-point")
    if op["targets_met"]:
        assert max(op["val"]["tb_fp_per_normal_film"].values()) <= op["targets"]["fp_per_normal_film"]
        assert op["val"]["tb_precision"] >= op["targets"]["precision"]
    assert "VinBigData findings were not ruled out" in op["vinbig_note"]
    assert not any("healthy chests is unmeasured" in line for line in card["limitations"])


def test_card_limitation_and_page_rows_from_the_operating_point(tmp_path):
    from cxr_core.detect import operating as O

    card = tmp_path / "detector.json"
    card.write_text(json.dumps({"name": "x", "limitations": [
        "TB from 799 films; it never saw a TB-negative TBX11K image, so its false positive rate on healthy chests "
        "is unmeasured.", "Research preview."]}))
    grid_t = [0.05, 0.1, 0.31]
    rates = {"tb_fp_per_film": [1.0, 0.5, 0.04], "films_with_tb_box": [0.5, 0.3, 0.04],
             "vinbig_boxes_per_film": [0.0, 0.0, 0.0]}
    op = _card_with_op()["operating_point"] | {"grid": {"threshold": grid_t, "val": {
        "tb_films": {"precision": [0.4, 0.6, 0.94], "recall": [0.8, 0.7, 0.54]},
        "normal_films": {"adult": rates, "paediatric": rates}}}}
    out = O.write_to_card(op, card)
    again = json.loads(card.read_text())
    assert again == out and again["name"] == "x" and again["operating_point"]["threshold"] == 0.31
    assert "0.048 (adult)" in again["limitations"][0] and "unmeasured" not in again["limitations"][0]
    assert again["limitations"][1] == "Research preview."
    rows = O.operating_point_table(again["operating_point"])
    assert [r["Threshold"] for r in rows] == [0.05, 0.1, 0.31] and rows[-1]["Chosen"] == "yes"
    assert "per 100 adult films" in O.meaning_text(again["operating_point"])
    note = O.figure_threshold_note({"predicted_vs_actual": {"threshold": 0.082}}, again)
    assert note and "0.08" in note and "0.31" in note
    assert O.figure_threshold_note({"predicted_vs_actual": {"threshold": 0.31}}, again) is None


def test_cli_offers_operating_point(capsys):
    from cxr_core.__main__ import main as top
    from cxr_core.detect.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["operating-point", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--max-per-group", "--seed", "--fp-target", "--precision-target", "--no-card"):
        assert flag in text
    assert top(["detect", "operating-point", "--help"]) == 0
    assert top(["detect", "--help"]) == 0 and "operating-point" in capsys.readouterr().out


@requires_weights
@pytest.mark.skipif(not (CXR3_OK and TBX_OK), reason="needs the cxr3 manifest and TBX11K in ../shared (set CXR_SHARED_DIR)")
def test_operating_point_study_runs_the_app_detector_on_a_small_sample(tmp_path):
    from cxr_core.detect import operating as O
    from cxr_core.detect.predict import default_threshold

    labels = pd.read_csv(settings.TBX11K_DIR / "labels.csv")
    keep = sorted(labels.loc[labels["split"] == "val", "image_id"].unique())[:3]
    tbx = tmp_path / "tbx"
    (tbx / "images").mkdir(parents=True)
    labels[labels["image_id"].isin(keep)].to_csv(tbx / "labels.csv", index=False)
    for i in keep:
        (tbx / "images" / f"{i}.jpg").symlink_to(settings.TBX11K_DIR / "images" / f"{i}.jpg")
    res = O.study(splits=("val",), max_per_group=2, tbx_dir=tbx, other_labels=(), progress=False, compare_to=0.082)
    assert res["val"]["normal_films"] == {"adult": 2, "paediatric": 2} and res["val"]["tb_films"] == 3
    assert res["threshold"] in res["grid"]["threshold"] and res["seed"] == settings.SEED
    assert len(res["grid"]["val"]["tb_films"]["precision"]) == len(O.GRID)
    assert res["at_previous_threshold"]["threshold"] == 0.082
    assert O.study(splits=("val",), max_per_group=2, tbx_dir=tbx, other_labels=(), progress=False)["grid"] \
        == res["grid"]  # fixed seed: the same films, the same numbers
    card = O.write_to_card(res, tmp_path / "detector.json")
    assert default_threshold(card) == res["threshold"]


def _detector_figures():
    per_class = {name: {"n": 10, "quantile_values": [0.001 * (i + 1), 0.002 * (i + 1), 0.004 * (i + 1),
                                                      0.008 * (i + 1), 0.02 * (i + 1)]}
                 for i, name in enumerate(settings.VINBIG_CLASSES)}
    return {"box_area": {"per_class": per_class},
            "tbx11k": {"class": list(settings.TB_CLASSES), "boxes": [900, 200], "images": [600, 150],
                       "area_quantile_values": [[0.01, 0.02, 0.03, 0.05, 0.1], [0.005, 0.01, 0.02, 0.03, 0.06]]},
            "predicted_vs_actual": {"split": "test", "n_images": 87, "threshold": 0.31,
                                    "class": list(settings.DETECTOR_CLASSES), "actual_boxes": [0] * 14 + [105, 25],
                                    "predicted_boxes": [0] * 14 + [82, 0]}}


@pytest.mark.parametrize("source", ["constructed", "shipped"])
def test_detector_page_figures_are_labelled_and_apart(source):
    from cxr_core import dashboard

    if source == "shipped":
        path = settings.WEIGHTS_DIR / "detector_figures.json"
        if not path.is_file():
            pytest.skip(f"no {path}")
        figures = json.loads(path.read_text())
    else:
        figures = _detector_figures()
    area = dashboard.box_area_figure(figures)
    names = [t.name for t in area.data]
    assert names == list(settings.DETECTOR_CLASSES)  # one box trace per class, 14 VinBigData + 2 TB
    assert all(t.type == "box" and list(t.x) == [t.name] for t in area.data)  # each at its own labelled slot
    assert area.layout.xaxis.type == "category" and area.layout.xaxis.title.text.startswith("class")
    assert area.layout.yaxis.title.text.startswith("box area") and area.layout.yaxis.type == "log"
    pva = dashboard.predicted_vs_actual_figure(figures)
    assert [t.name for t in pva.data] == ["radiologists (actual)", "detector (predicted)"]
    assert pva.layout.xaxis.title.text.startswith("boxes (test split")
    assert pva.layout.legend.orientation == "h" and pva.layout.legend.y >= 1.0  # above the plot, off the axis titles
    for fig in (area, pva):
        t = fig.layout.title
        assert t.text and t.yanchor == "top" and t.y >= 0.95 and t.pad.t >= 30  # below the toolbar's row
        assert fig.layout.margin.t >= 60


def test_label_tags_stay_inside_the_image_and_apart():
    from cxr_core.detect.predict import label_layout

    w, h = 300, 200
    anchors = [(5, 2, 100, 80)] * 6 + [(280, 190, 299, 199), (-50, -40, 20, 10), (0, 0, 299, 199)]
    sizes = [(90, 14)] * 6 + [(120, 14), (60, 14), (400, 14)]  # the last one is wider than the image
    spots = label_layout(anchors, sizes, (w, h))
    rects = [(x, y, lw, lh) for (x, y), (lw, lh) in zip(spots, sizes)]
    for x, y, lw, lh in rects:
        assert 0 <= x and 0 <= y and y + lh <= h and (x + lw <= w or x == 0)
    fitting = rects[:8]  # every tag that fits the image is apart from every other
    for i, a in enumerate(fitting):
        for b in fitting[i + 1:]:
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1], (a, b)
    assert spots[0] == (5, 2)  # no room above: inside the box's top edge


def test_draw_boxes_keeps_labels_in_a_small_image():
    from cxr_core.detect import Box, class_colour, draw_boxes

    rgb = np.zeros((64, 80, 3), np.uint8)
    boxes = [Box(-10, -10, 40, 30, 14, "Active tuberculosis", 0.91, True),
             Box(0, 0, 40, 30, 15, "Obsolete tuberculosis", 0.5, True),
             Box(70, 60, 200, 200, 3, "Cardiomegaly", 0.3, False)]
    out = draw_boxes(rgb, boxes)
    assert out.shape == rgb.shape
    for b in boxes:  # each tag's colour is on the image
        assert (out.reshape(-1, 3) == class_colour(b.class_id)).all(1).any()


@pytest.mark.skipif(not settings.DETECTOR_CARD.is_file(), reason=f"no detector card at {settings.DETECTOR_CARD}")
def test_detector_page_shows_the_operating_point(tmp_path, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    card = json.loads(settings.DETECTOR_CARD.read_text())
    if "operating_point" not in card:
        pytest.skip("the shipped card has no operating_point yet")
    d = tmp_path / "weights"
    d.mkdir()
    for name in ("detector.json", "detector_metrics.json", "detector_figures.json"):
        if (settings.WEIGHTS_DIR / name).is_file():
            shutil.copy(settings.WEIGHTS_DIR / name, d / name)
    monkeypatch.setattr(settings, "WEIGHTS_DIR", d)
    monkeypatch.setattr(settings, "DETECTOR_WEIGHTS", d / "detector.pt")
    monkeypatch.setattr(settings, "LUNGSEG_WEIGHTS", d / "lungseg.pt")
    st.cache_resource.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "streamlit_app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/detector.py").run()
    assert not at.exception, at.exception
    op = card["operating_point"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Threshold"] == f"{op['threshold']:.2f}"
    assert metrics["TB precision"] == f"{op['val']['tb_precision']:.2f}"
    assert metrics["TB recall"] == f"{op['val']['tb_recall']:.2f}"
    assert metrics["TB boxes / Normal film (adult)"] == f"{op['val']['tb_fp_per_normal_film']['adult']:.3f}"
    assert metrics["TB boxes / Normal film (child)"] == f"{op['val']['tb_fp_per_normal_film']['paediatric']:.3f}"
    info = "\n".join(str(e.value) for e in at.info)
    assert "per 100 adult films" in info and "labelled Normal" in info
    captions = "\n".join(str(e.value) for e in at.caption)
    assert "Test split at the same threshold" in captions and "box slider" in captions
    st.cache_resource.clear()


def test_conflict_note_uses_boxes_at_the_cards_operating_point(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cxr_core import detection, pipeline
    from cxr_core.io import load_image

    d = tmp_path / "weights"
    d.mkdir()
    (d / "detector.json").write_text(json.dumps(_card_with_op(threshold=0.31, best_f1=0.08)))
    monkeypatch.setattr(settings, "WEIGHTS_DIR", d)
    monkeypatch.setattr(settings, "DETECTOR_WEIGHTS", d / "detector.pt")
    found = [Box(10, 10, 50, 50, 14, "Active tuberculosis", 0.12, True),  # above the old 0.08, below 0.31
             Box(60, 60, 90, 90, 3, "Cardiomegaly", 0.6, False)]
    monkeypatch.setattr(detection, "detect", lambda image, conf=0.25, **k: [b for b in found if b.confidence >= conf])
    png = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(png)
    normal = SimpleNamespace(predicted="normal", abstained=False)
    a = pipeline.Analysis(image=load_image(png), quality=None, prediction=normal)
    shown = a.boxes()  # default threshold: the card's operating point
    assert [b.label for b in shown] == ["Cardiomegaly"]
    assert not any("classifier suggests Normal" in n for n in a.notes(shown))  # the 0.12 TB box is not shown
    low = a.boxes(conf=0.1)
    assert any("Active tuberculosis" in n for n in a.notes(low))  # a validated box the reader sees is flagged
