"""Lung segmentation: geometry, chest box, plausibility and (with shared data) real-image Dice.

Tests that need the trained weights skip when weights/lungseg.pt is missing; tests that need the
real images skip when the shared data folder (../shared) is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core import lungs, settings
from cxr_core.io import CXRImage, ImageMeta

HAS_WEIGHTS = settings.LUNGSEG_WEIGHTS.is_file()
HAS_DATA = (settings.LUNGSEG_DIR / "manifest.csv").is_file()
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason=f"trained weights missing: {settings.LUNGSEG_WEIGHTS}")
needs_data = pytest.mark.skipif(
    not HAS_DATA, reason=f"shared lungseg data not found at {settings.LUNGSEG_DIR} (needs ../shared)"
)


def _image(pixels: np.ndarray) -> CXRImage:
    h, w = pixels.shape
    meta = ImageMeta(format="PNG", original_size=(w, h), bit_depth=8, photometric="MONOCHROME2")
    return CXRImage(pixels=np.clip(pixels, 0, 1).astype(np.float32), meta=meta)


def _inside(box, h, w) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and all(isinstance(v, int) for v in box)


def _two_lungs(h=400, w=360) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[80:320, 50:160] = True  # right lung (image left)
    m[90:330, 200:310] = True  # left lung
    return m


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def test_data():
    if not (HAS_DATA and HAS_WEIGHTS):
        pytest.skip("needs shared lungseg data and trained weights")
    data = lungs.load_split("test")
    # two per source, fixed choice
    picks = [i for s in ("gbseg", "darwin") for i in [j for j, src in enumerate(data["sources"]) if src == s][:2]]
    return {k: (v[picks] if isinstance(v, np.ndarray) else [v[i] for i in picks]) for k, v in data.items()}


# --- pure geometry (no model) --------------------------------------------------------------------


def test_letterbox_roundtrip_geometry():
    img = np.random.default_rng(0).random((300, 500)).astype(np.float32)
    boxed, lb = lungs.letterbox(img, 256)
    assert boxed.shape == (256, 256)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (256, 154, 0, 51)
    assert np.all(boxed[:51] == 0) and np.all(boxed[51 + 154 :] == 0)
    back = lungs.unletterbox(boxed, lb)
    assert back.shape == img.shape


def test_chest_box_two_fields_with_margin():
    m = _two_lungs()
    box = lungs.chest_box(m, margin=0.05)
    assert _inside(box, *m.shape)
    x0, y0, x1, y1 = box
    assert x0 <= 50 and x1 >= 310 and y0 <= 80 and y1 >= 330
    assert x0 >= 50 - 0.06 * 260 and y1 <= 330 + 0.06 * 250


def test_chest_box_ignores_specks_and_blob_below():
    m = _two_lungs()
    m[5:9, 5:9] = True  # speck
    m[370:395, 300:350] = True  # a device-like blob below the chest, not side by side
    box = lungs.chest_box(m)
    assert box[1] > 40 and box[3] < 360


def test_chest_box_one_collapsed_lung_is_mirrored():
    m = np.zeros((400, 360), bool)
    m[80:320, 200:310] = True  # only the left lung is aerated
    x0, _, x1, _ = lungs.chest_box(m, margin=0.0)
    assert x0 <= 360 - 310 and x1 >= 310  # the other hemithorax stays in the box


def test_chest_box_whole_image_when_nothing_found():
    for m in (np.zeros((200, 300), bool), np.ones((200, 300), bool) & False):
        assert lungs.chest_box(m) == (0, 0, 300, 200)


def test_chest_box_always_inside_image_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(30):
        h, w = rng.integers(64, 500, size=2)
        m = rng.random((h, w)) < rng.uniform(0, 1)
        box = lungs.chest_box(m, margin=float(rng.uniform(0, 0.5)))
        assert _inside(box, h, w)
    edge = np.zeros((100, 100), bool)
    edge[0:90, 0:30] = edge[0:90, 70:100] = True  # fields touching the border
    assert _inside(lungs.chest_box(edge, margin=0.3), 100, 100)


def test_plausibility_rules():
    assert lungs.lung_plausibility(_two_lungs())[0]
    stacked = np.zeros((400, 360), bool)
    stacked[40:150, 60:300] = stacked[220:330, 60:300] = True  # rotated 90 degrees
    assert not lungs.lung_plausibility(stacked)[0]
    ok, reason = lungs.lung_plausibility(np.zeros((100, 100), bool))
    assert not ok and "no lung" in reason
    assert not lungs.lung_plausibility(np.ones((100, 100), bool))[0]
    blob = np.zeros((300, 300), bool)
    blob[40:260, 30:270] = True  # one solid region, no mediastinum: not two joined lungs
    assert not lungs.lung_plausibility(blob)[0]
    joined = _two_lungs()
    joined[250:330, 150:210] = True  # lungs touching below the heart, gap above
    assert lungs.lung_plausibility(joined)[0]
    wide = np.zeros((400, 360), bool)
    wide[150:220, 20:170] = wide[150:220, 190:340] = True  # side by side but wide bands (rotated)
    assert not lungs.lung_plausibility(wide)[0]
    specks = np.zeros((200, 200), bool)
    specks[::20, ::20] = True
    assert not lungs.lung_plausibility(specks)[0]


def test_outline_helpers():
    m = _two_lungs()
    contours = lungs.outline(m)
    assert len(contours) == 2 and all(c.ndim == 2 and c.shape[1] == 2 for c in contours)
    layer = lungs.outline_rgba(m)
    assert layer.shape == (*m.shape, 4) and layer.dtype == np.uint8
    assert layer[..., 3].any() and not layer[200, 100, 3]  # drawn on the edge, not inside


@pytest.mark.skipif(not settings.MOBILENET_V2_IMAGENET.is_file(), reason="shared ImageNet weights absent (../shared)")
def test_imagenet_weights_map_onto_smp_encoder():
    import torch

    model = lungs.build_model(imagenet=True)
    src = torch.load(settings.MOBILENET_V2_IMAGENET, weights_only=True)
    assert torch.equal(model.encoder.state_dict()["features.18.0.weight"], src["18.0.weight"])


# --- trained model --------------------------------------------------------------------------------


@needs_weights
def test_segmenter_is_cached():
    assert lungs.load_segmenter() is lungs.load_segmenter()


@needs_weights
def test_dice_on_real_test_images(test_data):
    seg = lungs.load_segmenter()
    probs = seg.predict(test_data["images"])
    dices = []
    for i in range(len(test_data["ids"])):
        pred = probs[i, int(test_data["heads"][i])] > 0.5
        dices.append(lungs.dice_iou(pred, test_data["masks"][i])[0])
    assert min(dices) > 0.80, dices
    assert np.mean(dices) > 0.90, dices


@needs_weights
def test_segment_real_image_is_plausible_and_original_size(test_data):
    img = test_data["images"][0]
    crop = img[:, 20:236]  # non-square input: 256 x 216
    lm = lungs.segment(_image(crop))
    assert lm.mask.shape == crop.shape and lm.mask.dtype == bool
    assert lm.probability.shape == crop.shape and lm.probability.dtype == np.float32
    assert lm.plausible, lm.reason
    assert 0.1 < lm.lung_fraction < 0.7 and lm.n_components >= 1


@needs_weights
def test_padded_image_box_moves_with_the_chest(test_data):
    img = test_data["images"][2]
    base = lungs.chest_box(lungs.segment(_image(img)))
    left, top = 180, 60
    padded = np.pad(img, ((top, 120), (left, 40)))  # black borders: 436 x 476
    lm = lungs.segment(_image(padded))
    box = lungs.chest_box(lm)
    assert _inside(box, *padded.shape)
    expected = (base[0] + left, base[1] + top, base[2] + left, base[3] + top)
    assert np.abs(np.subtract(box, expected)).max() <= 16, (box, expected)
    assert lm.plausible


@needs_weights
def test_rotated_image_is_flagged_or_box_adapts(test_data):
    img = test_data["images"][3]
    base = lungs.chest_box(lungs.segment(_image(img)))
    rot = np.ascontiguousarray(np.rot90(img))  # 90 deg counter-clockwise: (x, y) -> (y, W - x)
    lm = lungs.segment(_image(rot))
    box = lungs.chest_box(lm)
    assert _inside(box, *rot.shape)
    w = img.shape[1]
    expected = (base[1], w - base[2], base[3], w - base[0])
    adapted = np.abs(np.subtract(box, expected)).max() <= 25
    assert (not lm.plausible) or adapted, (lm.reason, box, expected)


@needs_weights
@pytest.mark.parametrize("kind", ["noise", "blank_black", "blank_white", "grey", "gradient", "checker"])
def test_non_chest_images_flagged_and_box_inside(kind):
    rng = np.random.default_rng(7)
    h, w = 300, 420
    pixels = {
        "noise": rng.random((h, w)),
        "blank_black": np.zeros((h, w)),
        "blank_white": np.ones((h, w)),
        "grey": np.full((h, w), 0.5),
        "gradient": np.tile(np.linspace(0, 1, w), (h, 1)),
        "checker": (np.indices((h, w)) // 30).sum(axis=0) % 2 * 1.0,
    }[kind]
    lm = lungs.segment(_image(pixels))
    assert lm.mask.shape == (h, w)
    assert not lm.plausible, (kind, lm.reason, lm.lung_fraction)
    assert _inside(lungs.chest_box(lm), h, w)


@needs_weights
def test_box_inside_on_odd_sizes():
    rng = np.random.default_rng(3)
    for h, w in [(64, 64), (64, 900), (1024, 80), (257, 255)]:
        lm = lungs.segment(_image(rng.random((h, w)) * 0.3))
        assert lm.mask.shape == (h, w)
        assert _inside(lungs.chest_box(lm), h, w)


def test_card_says_when_a_run_mixed_training_regimes():
    """A resumed run with other settings must not be described as one clean schedule."""
    one = [{"epoch": 0, "crop": None, "freeze_blocks": 0, "batch": 8, "lr": 1e-3, "threads": 1}]
    assert lungs._schedule_note(one, 30) == "30 epochs in one schedule: full 256x256 images, all layers trained."
    mixed = one + [{"epoch": 2, "crop": 192, "freeze_blocks": 4, "batch": 8, "lr": 1e-3}]
    note = lungs._schedule_note(mixed, 6)
    assert note.startswith("resumed with other settings")
    assert "from epoch 3: random 192x192 windows, first 4 encoder blocks frozen" in note


def test_old_module_name_is_the_same_code() -> None:
    """`cxr_core.lungs` stays importable (people's scripts); its names are cxr_core.segment's objects."""
    from cxr_core import segment
    from cxr_core.segment import predict, train, val

    assert lungs.segment is segment.segment is predict.segment
    assert lungs.train is train.train and lungs.evaluate is val.evaluate
    assert set(segment.__all__) <= set(dir(lungs))
