"""cxr_core.preprocess: shapes, dtypes, determinism, path == bytes, crop boxes, normalisation
and augmentation (shape and range kept)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import chest_phantom, cxr3_rows, encode, requires_cxr3, to_uint8
from cxr_core import settings
from cxr_core.io import load_image
from cxr_core.preprocess import (
    FAMILIES,
    crop,
    image_to_tensor,
    robust_stretch,
    spec_for,
    stack_standardised,
    standardise,
    to_model_tensor,
)

torch.set_num_threads(1)

CHEST = chest_phantom((300, 260), seed=2)


def test_family_specs():
    assert spec_for("vbreathnet").size == settings.VBREATHNET_SIZE == 256
    assert spec_for("imagenet").size == settings.BASELINE_SIZE == 224
    assert spec_for("imagenet").mean == settings.IMAGENET_MEAN
    custom = spec_for("vbreathnet", 128)
    assert custom.size == 128 and custom.mean == FAMILIES["vbreathnet"].mean
    with pytest.raises(KeyError):
        spec_for("no-such-family")


# --- robust_stretch / standardise -----------------------------------------------------------------


def test_robust_stretch_maps_percentiles():
    x = np.linspace(0.2, 0.6, 10_000, dtype=np.float32).reshape(100, 100)
    y = robust_stretch(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    lo, hi = np.percentile(x, [1, 99])
    assert y.min() == 0.0 and y.max() == 1.0
    np.testing.assert_allclose(y[50, 50], (x[50, 50] - lo) / (hi - lo), atol=1e-5)


def test_robust_stretch_keeps_flat_images_flat():
    flat = np.full((64, 64), 0.4, np.float32) + np.random.default_rng(0).normal(0, 1e-5, (64, 64)).astype(np.float32)
    y = robust_stretch(flat)
    assert float(y.max() - y.min()) < 1e-3  # noise is not amplified to full range


@pytest.mark.parametrize("shape", [(300, 260), (64, 64), (1024, 700), (100, 900)])
@pytest.mark.parametrize("size", [224, 256])
def test_standardise_shape_dtype(shape, size):
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    y = standardise(x, size)
    assert y.shape == (size, size) and y.dtype == np.uint8
    assert y.min() == 0 and y.max() == 255  # stretched to the full range


def test_standardise_deterministic_and_input_untouched():
    x = CHEST.copy()
    a, b = standardise(x, 256), standardise(x, 256)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, CHEST)


def test_standardise_removes_exposure_differences():
    a = standardise(CHEST, 224).astype(int)
    b = standardise(0.2 + 0.5 * CHEST, 224).astype(int)  # same anatomy, different exposure/contrast
    assert np.abs(a - b).max() <= 2


def test_standardise_accepts_other_dtypes():
    a = standardise(CHEST, 224)
    b = standardise(CHEST.astype(np.float64), 224)
    np.testing.assert_array_equal(a, b)


# --- crop boxes -------------------------------------------------------------------------------------


def test_crop_box_selects_region():
    box = (30, 40, 230, 260)
    np.testing.assert_array_equal(crop(CHEST, box), CHEST[40:260, 30:230])
    np.testing.assert_array_equal(standardise(CHEST, 224, box), standardise(CHEST[40:260, 30:230], 224))


@pytest.mark.parametrize(
    "box, expected",
    [
        ((-50, -20, 100, 120), (slice(0, 120), slice(0, 100))),  # negative corner clipped
        ((200, 250, 9999, 9999), (slice(250, 300), slice(200, 260))),  # beyond the far edge clipped
        ((10.7, 20.2, 150.9, 180.5), (slice(20, 180), slice(10, 150))),  # float coordinates truncated
    ],
    ids=["negative", "overflow", "float"],
)
def test_crop_box_clipped_to_image(box, expected):
    np.testing.assert_array_equal(crop(CHEST, box), CHEST[expected])


@pytest.mark.parametrize("box", [(10, 10, 15, 200), (10, 10, 200, 12), (200, 200, 100, 100), (500, 500, 600, 600)],
                         ids=["too-narrow", "too-flat", "inverted", "outside"])
def test_degenerate_box_falls_back_to_full_image(box):
    np.testing.assert_array_equal(crop(CHEST, box), CHEST)
    np.testing.assert_array_equal(standardise(CHEST, 224, box), standardise(CHEST, 224))


def test_no_box_is_identity():
    assert crop(CHEST, None) is CHEST


# --- to_model_tensor -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_to_model_tensor_uint8_batch(family):
    spec = FAMILIES[family]
    batch = np.stack([standardise(CHEST, spec.size), standardise(chest_phantom(200, 3), spec.size)])
    x = to_model_tensor(batch, family)
    assert x.shape == (2, 3, spec.size, spec.size) and x.dtype == torch.float32
    for c in range(3):
        expected = (torch.from_numpy(batch).float() / 255 - spec.mean[c]) / spec.std[c]
        torch.testing.assert_close(x[:, c], expected)


def test_to_model_tensor_float_and_tensor_inputs_agree():
    u8 = np.stack([standardise(CHEST, 256)])
    a = to_model_tensor(u8, "vbreathnet")
    b = to_model_tensor(torch.from_numpy(u8), "vbreathnet")
    f = torch.from_numpy(u8).float().div(255).unsqueeze(1)  # (N, 1, S, S) float in [0, 1]
    f_before = f.clone()
    c = to_model_tensor(f, "vbreathnet")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(f, f_before)  # input not modified in place


def test_vbreathnet_normalisation_range():
    x = to_model_tensor(np.array([[[0, 255]]], np.uint8), "vbreathnet")
    assert x.min().item() == pytest.approx(-2.0) and x.max().item() == pytest.approx(2.0)


# --- image_to_tensor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_image_to_tensor_shapes(family, images):
    img = load_image(images.chest_png(size=(300, 260)))
    size = FAMILIES[family].size
    x = image_to_tensor(img, family)
    assert x.shape == (1, 3, size, size) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, image_to_tensor(img.pixels, family))  # CXRImage == ndarray
    assert image_to_tensor(img, family, size=128).shape == (1, 3, 128, 128)


def test_image_to_tensor_path_equals_bytes_and_is_deterministic(images):
    path = images.chest_jpeg(size=(320, 280), seed=4)
    from_path = image_to_tensor(load_image(path), "vbreathnet")
    from_bytes = image_to_tensor(load_image(path.read_bytes(), path.name), "vbreathnet")
    assert torch.equal(from_path, from_bytes)
    assert torch.equal(from_path, image_to_tensor(load_image(path), "vbreathnet"))


def test_image_to_tensor_with_box(images):
    img = load_image(images.chest_png(size=(300, 260)))
    box = (20, 30, 240, 280)
    x = image_to_tensor(img, "imagenet", box=box)
    expected = to_model_tensor(standardise(img.pixels[30:280, 20:240], 224)[None], "imagenet")
    torch.testing.assert_close(x, expected)


def test_png_and_16bit_png_give_near_identical_tensors(images):
    """Bit depth should not change what the model sees (robust stretch)."""
    u8 = to_uint8(CHEST)
    u16 = np.clip(np.rint(CHEST * 65535), 0, 65535).astype(np.uint16)
    a = image_to_tensor(load_image(encode(u8, "PNG")), "vbreathnet")
    b = image_to_tensor(load_image(encode(u16, "PNG")), "vbreathnet")
    assert (a - b).abs().max().item() < 0.1  # < ~6 grey levels after normalisation


def test_stack_standardised():
    out = stack_standardised([CHEST, chest_phantom(200, 1)], 64)
    assert out.shape == (2, 64, 64) and out.dtype == np.uint8
    empty = stack_standardised([], 64)
    assert empty.shape == (0, 64, 64) and empty.dtype == np.uint8


# --- augmentation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["standard", "acquisition"])
def test_train_augmentation_keeps_shape_and_range(kind: str):
    pytest.importorskip("torchvision")
    from cxr_core.preprocess import train_augmentation

    size = 64
    aug = train_augmentation(size, kind)
    x = torch.from_numpy(standardise(CHEST, size)).float().div(255).unsqueeze(0)  # (1, S, S)
    torch.manual_seed(0)
    outs = [aug(x) for _ in range(12)]
    for y in outs:
        assert y.shape == (1, size, size) and y.dtype == torch.float32
        assert y.min().item() >= 0.0 and y.max().item() <= 1.0
    assert any(not torch.equal(outs[0], y) for y in outs[1:])  # it is random...
    torch.manual_seed(0)
    again = [aug(x) for _ in range(12)]
    for a, b in zip(outs, again):  # ...but reproducible from the seed
        assert torch.equal(a, b)
    assert torch.equal(x, torch.from_numpy(standardise(CHEST, size)).float().div(255).unsqueeze(0))


def test_train_augmentation_does_not_flip():
    pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    from cxr_core.preprocess import train_augmentation

    for kind in ("standard", "acquisition"):
        names = {type(t).__name__ for t in train_augmentation(64, kind).transforms}
        assert not names & {"RandomHorizontalFlip", "RandomVerticalFlip"}
        assert isinstance(train_augmentation(64, kind), v2.Compose)
    with pytest.raises(ValueError, match="augment must be one of standard, acquisition"):
        train_augmentation(64, "heavy")


def test_acquisition_perturbations_do_what_their_names_say():
    """Each added op on a real film: gamma > 1 darkens mid-tones, noise adds variance of about its sd,
    low resolution removes fine detail, JPEG changes pixels but stays close; all stay in [0, 1]."""
    from cxr_core.preprocess import GaussianNoise, LowResolution, RandomGamma, RandomJPEG

    x = torch.from_numpy(standardise(CHEST, 128)).float().div(255).unsqueeze(0)
    torch.manual_seed(0)
    dark = RandomGamma((1.4, 1.4))(x)
    assert torch.allclose(dark, x.pow(1.4)) and dark.mean() < x.mean()
    noisy = GaussianNoise((0.03, 0.03))(x)
    assert 0.02 < float((noisy - x).std()) < 0.035
    def detail(t: torch.Tensor) -> float:  # mean |Laplacian|: fine detail
        c = t[..., 1:-1, 1:-1]
        return float((4 * c - t[..., 2:, 1:-1] - t[..., :-2, 1:-1] - t[..., 1:-1, 2:] - t[..., 1:-1, :-2]).abs().mean())

    low = LowResolution((32, 32))(x)
    assert low.shape == x.shape and detail(low) < 0.5 * detail(x)
    jpeg = RandomJPEG((30, 30))(x)
    assert jpeg.shape == x.shape and not torch.equal(jpeg, x) and float((jpeg - x).abs().mean()) < 0.03
    for y in (dark, noisy, low, jpeg):
        assert y.min() >= 0.0 and y.max() <= 1.0


# --- real data -----------------------------------------------------------------------------------------------


@requires_cxr3
def test_real_images_to_tensor():
    for row in cxr3_rows("val", 5, seed=3):
        path = settings.CXR3_DIR / row["path"]
        img = load_image(path)
        for family, spec in FAMILIES.items():
            x = image_to_tensor(img, family)
            assert x.shape == (1, 3, spec.size, spec.size) and torch.isfinite(x).all()
        assert torch.equal(image_to_tensor(img, "vbreathnet"), image_to_tensor(load_image(path.read_bytes()), "vbreathnet"))
