"""cxr_core.io: every supported input decodes to float32 2-D [0, 1] with the right metadata,
and every bad input raises ImageLoadError with a specific, readable message.

All inputs are built here (PIL / pydicom); nothing is read from disk except cxr3 (optional)."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import (
    chest_phantom,
    cxr3_rows,
    encode,
    make_dicom,
    requires_cxr3,
    to_uint8,
    to_uint16,
)
from cxr_core import settings
from cxr_core.io import CXRImage, ImageLoadError, ImageMeta, load_image

CHEST = chest_phantom((240, 200), seed=1)  # H x W: non-square on purpose
CHEST_U8 = to_uint8(CHEST)
CHEST_U16 = to_uint16(CHEST, 12)


def check_image(img: CXRImage, shape: tuple[int, int] | None = None) -> CXRImage:
    assert isinstance(img, CXRImage)
    assert isinstance(img.meta, ImageMeta)
    assert img.pixels.dtype == np.float32
    assert img.pixels.ndim == 2
    assert img.pixels.flags["C_CONTIGUOUS"]
    assert np.isfinite(img.pixels).all()
    assert 0.0 <= float(img.pixels.min()) and float(img.pixels.max()) <= 1.0
    if shape is not None:
        assert img.pixels.shape == shape
    return img


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# --- raster formats ------------------------------------------------------------------------


def test_png_8bit_exact_values_and_meta():
    img = check_image(load_image(encode(CHEST_U8, "PNG")), (240, 200))
    np.testing.assert_allclose(img.pixels, CHEST_U8 / 255.0, atol=1e-6)
    m = img.meta
    assert (m.format, m.original_size, m.bit_depth, m.photometric) == ("PNG", (200, 240), 8, "MONOCHROME2")
    assert m.channels == 1 and not m.had_alpha and not m.downscaled and m.colourfulness == 0.0
    assert m.modality is None and m.identifiers == {}


def test_png_16bit_is_stretched_and_keeps_depth():
    img = check_image(load_image(encode(Image.fromarray(CHEST_U16), "PNG")), (240, 200))
    assert img.meta.bit_depth == 16
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
    assert corr(img.pixels, CHEST_U16) > 0.9999


def test_png_palette():
    im = Image.fromarray(CHEST_U8).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img = check_image(load_image(encode(im, "PNG")), (240, 200))
    assert img.meta.photometric == "PALETTE"
    assert corr(img.pixels, CHEST) > 0.98
    assert img.meta.colourfulness < 0.01


def test_png_grey_alpha_flattened_onto_black():
    alpha = np.full_like(CHEST_U8, 255)
    alpha[:, :50] = 0  # left band fully transparent
    im = Image.fromarray(np.dstack([CHEST_U8, alpha]), "LA")
    img = check_image(load_image(encode(im, "PNG")), (240, 200))
    assert img.meta.had_alpha
    assert float(img.pixels[:, :50].max()) == 0.0
    np.testing.assert_allclose(img.pixels[:, 60:], CHEST_U8[:, 60:] / 255.0, atol=1 / 255)


def test_png_rgba_flattened():
    rgba = np.dstack([CHEST_U8] * 3 + [np.full_like(CHEST_U8, 128)])
    img = check_image(load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert img.meta.had_alpha and img.meta.channels == 3 and img.meta.photometric == "RGB"
    np.testing.assert_allclose(img.pixels, CHEST_U8 / 255.0 * 128 / 255, atol=2 / 255)


def test_png_1bit():
    im = Image.fromarray(CHEST_U8 > 128).convert("1")
    img = check_image(load_image(encode(im, "PNG")))
    assert img.meta.bit_depth == 1
    assert set(np.unique(img.pixels)) <= {0.0, 1.0}


def test_grey_rgb_is_not_colourful_but_a_photo_is():
    grey = check_image(load_image(encode(np.dstack([CHEST_U8] * 3), "PNG")))
    assert grey.meta.colourfulness < 1e-6 and grey.meta.channels == 3
    rng = np.random.default_rng(0)
    photo = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    col = check_image(load_image(encode(photo, "PNG")))
    assert col.meta.colourfulness > 0.3


@pytest.mark.parametrize(
    "mode, kw",
    [
        ("L", {}),
        ("RGB", {}),
        ("L", {"progressive": True}),
        ("RGB", {"progressive": True, "optimize": True}),
        ("CMYK", {}),
    ],
    ids=["grey", "rgb", "progressive-grey", "progressive-rgb", "cmyk"],
)
def test_jpeg_variants(mode, kw):
    im = Image.fromarray(CHEST_U8).convert(mode)
    img = check_image(load_image(encode(im, "JPEG", quality=95, **kw), "x.jpg"), (240, 200))
    assert img.meta.format == "JPEG" and img.meta.bit_depth == 8
    assert img.meta.photometric == {"L": "MONOCHROME2", "RGB": "RGB", "CMYK": "CMYK"}[mode]
    assert img.meta.colourfulness < 0.02
    # CMYK stores ink: PIL's CMYK->RGB gives a faithful (not inverted) greyscale
    assert corr(img.pixels, CHEST) > 0.98


def test_jpeg_exif_rotation_applied():
    base = np.zeros((120, 200), np.uint8)
    base[:20, :20] = 255  # bright marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = check_image(load_image(encode(Image.fromarray(base), "JPEG", quality=95, exif=exif.tobytes())))
    assert img.pixels.shape == (200, 120)  # displayed portrait
    assert img.meta.original_size == (200, 120)  # as stored
    assert img.pixels[:20, -20:].mean() > 0.8  # marker now top-right
    assert img.pixels[:20, :20].mean() < 0.2


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_bmp(mode):
    img = check_image(load_image(encode(Image.fromarray(CHEST_U8).convert(mode), "BMP")), (240, 200))
    assert img.meta.format == "BMP"
    assert corr(img.pixels, CHEST) > 0.98


@pytest.mark.parametrize(
    "array, kw",
    [
        (CHEST_U8, {}),
        (CHEST_U8, {"compression": "tiff_lzw"}),
        (CHEST_U16, {}),
        (CHEST.astype(np.float32), {}),
        (np.dstack([CHEST_U8] * 3), {"compression": "tiff_deflate"}),
    ],
    ids=["u8", "u8-lzw", "u16", "float32", "rgb-deflate"],
)
def test_tiff(array, kw):
    img = check_image(load_image(encode(Image.fromarray(array), "TIFF", **kw)), (240, 200))
    assert img.meta.format == "TIFF"
    assert corr(img.pixels, CHEST) > 0.999


def test_path_bytes_and_filelike_agree(images):
    path = images.write(encode(CHEST_U8, "PNG"), "c.png")
    data = path.read_bytes()
    stream = io.BytesIO(data)
    stream.seek(0, 2)  # already read to the end, as after a preview in the app
    from_path = load_image(path)
    results = [load_image(str(path)), load_image(data), load_image(bytearray(data)),
               load_image(memoryview(data)), load_image(stream, "c.png")]
    with open(path, "rb") as fh:
        results.append(load_image(fh))
    assert from_path.filename == "c.png"
    for r in results:
        np.testing.assert_array_equal(r.pixels, from_path.pixels)
        assert r.meta == from_path.meta


def test_format_comes_from_content_not_name():
    img = load_image(encode(CHEST_U8, "JPEG"), "scan.dcm")
    assert img.meta.format == "JPEG"
    img = load_image(make_dicom(CHEST_U16, bits_stored=12), "scan.png")
    assert img.meta.format == "DICOM"


def test_min_side_boundary():
    ok = np.full((settings.MIN_IMAGE_SIDE, 300), 100, np.uint8)
    check_image(load_image(encode(ok, "PNG")))
    small = np.full((settings.MIN_IMAGE_SIDE - 1, 300), 100, np.uint8)
    with pytest.raises(ImageLoadError, match=rf"too small.*300 x {settings.MIN_IMAGE_SIDE - 1}.*at least {settings.MIN_IMAGE_SIDE}"):
        load_image(encode(small, "PNG"))


def test_large_jpeg_downscaled():
    # Speed is measured by the benchmark (python -m cxr_core.bench), not asserted here.
    big = np.asarray(Image.fromarray(to_uint8(chest_phantom(512, 3))).resize((6000, 4800)))
    data = encode(big, "JPEG", quality=90)
    img = check_image(load_image(data))
    assert img.meta.original_size == (6000, 4800)
    assert img.meta.downscaled
    assert max(img.pixels.shape) == settings.WORKING_SIDE
    assert img.pixels.shape == (819, 1024)


def test_large_png_downscaled():
    big = np.asarray(Image.fromarray(to_uint8(chest_phantom(256, 4))).resize((3000, 2500)))
    data = encode(np.dstack([big] * 3), "PNG", compress_level=1)
    img = check_image(load_image(data))
    assert img.meta.downscaled and img.pixels.shape == (853, 1024)
    assert corr(img.pixels[::8, ::8], np.asarray(Image.fromarray(big).resize((1024, 853)))[::8, ::8]) > 0.99


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "LA", "1", "CMYK"])
def test_large_images_of_every_mode_are_reduced(mode):
    base = Image.fromarray(to_uint8(chest_phantom(256, 6))).resize((2300, 2100))
    if mode == "I;16":
        im = Image.fromarray((np.asarray(base).astype(np.uint16) * 257))
    elif mode == "LA":
        im = Image.merge("LA", [base, Image.new("L", base.size, 255)])
    else:
        im = base.convert(mode)
    data = encode(im, "TIFF" if mode == "CMYK" else "PNG", **({} if mode == "CMYK" else {"compress_level": 1}))
    img = check_image(load_image(data))
    assert img.meta.downscaled and img.pixels.shape == (935, 1024) and img.meta.original_size == (2300, 2100)
    if mode != "1":
        assert corr(img.pixels[::4, ::4], np.asarray(base.resize((1024, 935)))[::4, ::4]) > 0.98


# --- DICOM -------------------------------------------------------------------------------------


def test_dicom_basic_meta_and_identifiers():
    data = make_dicom(CHEST_U16, bits_stored=12)
    img = check_image(load_image(data), (240, 200))
    m = img.meta
    assert (m.format, m.original_size, m.bit_depth, m.photometric) == ("DICOM", (200, 240), 12, "MONOCHROME2")
    assert (m.modality, m.view_position, m.pixel_spacing) == ("DX", "PA", (0.139, 0.139))
    assert m.identifiers == {}
    assert "Doe" not in repr(img)
    assert corr(img.pixels, CHEST) > 0.9999
    ident = load_image(data, include_identifiers=True).meta.identifiers
    assert ident["PatientName"] == "Doe^Jane" and ident["PatientID"] == "ID12345"


def test_dicom_monochrome1_inverted():
    mono2 = load_image(make_dicom(CHEST_U16, bits_stored=12)).pixels
    mono1 = check_image(load_image(make_dicom(CHEST_U16, bits_stored=12, photometric="MONOCHROME1")))
    assert mono1.meta.photometric == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2, atol=1e-6)


def _ramp(h: int = 128, w: int = 256, top: int = 4095) -> np.ndarray:
    return np.tile(np.linspace(0, top, w).round().astype(np.uint16), (h, 1))


def test_dicom_window_centre_width():
    raw = _ramp()
    img = check_image(load_image(make_dicom(raw, bits_stored=12, WindowCenter=2048, WindowWidth=1024)))
    row = img.pixels[0]
    assert row[raw[0] < 1500].max() == 0.0  # below the window: black
    assert row[raw[0] > 2600].min() == 1.0  # above: white
    mid = (raw[0] > 1600) & (raw[0] < 2500)
    expected = (raw[0][mid] - (2048 - 0.5)) / 1023 + 0.5  # DICOM linear window
    np.testing.assert_allclose(row[mid], expected, atol=2e-3)


def test_dicom_rescale_slope_intercept_then_window():
    raw = _ramp()
    # stored values s map to s*2 - 1000; a window on the rescaled scale selects the middle half
    img = load_image(make_dicom(raw, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                                WindowCenter=3095, WindowWidth=4096))
    row = check_image(img).pixels[0]
    hu = raw[0] * 2.0 - 1000
    mid = (hu > 1200) & (hu < 5000)
    expected = (hu[mid] - (3095 - 0.5)) / 4095 + 0.5
    np.testing.assert_allclose(row[mid], expected, atol=2e-3)
    assert row[hu < 1000].max() == 0.0


def test_dicom_rescale_without_window_is_linear():
    raw = _ramp()
    a = load_image(make_dicom(raw, bits_stored=12)).pixels
    b = load_image(make_dicom(raw, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=100)).pixels
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = load_image(make_dicom(raw, bits_stored=12, RescaleSlope=-1, RescaleIntercept=0)).pixels
    np.testing.assert_allclose(c, 1 - a, atol=1e-5)  # a negative slope inverts


def test_dicom_16bit_voi_lut_sequence():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = _ramp(top=65535)
    lut = Dataset()
    entries = 4096
    # a gamma-like VOI LUT over the first 4096 stored values, 12-bit output
    lut_values = (np.sqrt(np.arange(entries) / (entries - 1)) * 4095).round().astype(np.uint16)
    lut.add_new("LUTDescriptor", "US", [entries, 0, 12])
    lut.add_new("LUTData", "US", lut_values.tolist())
    raw12 = _ramp(top=4095)
    img = check_image(load_image(make_dicom(raw12, bits_stored=16, VOILUTSequence=Sequence([lut]),
                                            WindowCenter=100, WindowWidth=10)))  # LUT wins over window
    expected = lut_values[raw12[0]] / 4095.0
    np.testing.assert_allclose(img.pixels[0], expected, atol=1e-3)
    assert img.meta.bit_depth == 16 and raw.max() == 65535


def test_dicom_rgb_secondary_capture():
    rgb = np.dstack([CHEST_U8] * 3)
    grey = check_image(load_image(make_dicom(rgb, photometric="RGB")), (240, 200))
    assert grey.meta.channels == 3 and grey.meta.colourfulness < 1e-6
    np.testing.assert_allclose(grey.pixels, CHEST_U8 / 255.0, atol=1 / 255)
    tinted = rgb.copy()
    tinted[..., 0] = 255
    col = check_image(load_image(make_dicom(tinted, photometric="RGB")))
    assert col.meta.colourfulness > 0.3


@pytest.mark.parametrize(
    "syntax",
    ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"],
    ids=["RLE-lossless", "JPEG2000-lossless"],
)
def test_dicom_compressed_transfer_syntaxes(syntax):
    try:
        data = make_dicom(CHEST_U16, bits_stored=12, compress=syntax)
    except (NotImplementedError, RuntimeError, ImportError) as exc:  # encoder plugin missing
        pytest.skip(f"pydicom cannot encode {syntax} here: {exc}")
    img = check_image(load_image(data))
    ref = load_image(make_dicom(CHEST_U16, bits_stored=12)).pixels
    np.testing.assert_allclose(img.pixels, ref, atol=1e-6)


def test_dicom_jpeg_baseline_encapsulated():
    from pydicom.encaps import encapsulate

    jpeg = encode(CHEST_U8, "JPEG", quality=95)
    data = make_dicom(CHEST_U8, transfer_syntax="1.2.840.10008.1.2.4.50", PixelData=encapsulate([jpeg]),
                      LossyImageCompression="01")
    img = check_image(load_image(data), (240, 200))
    ref = load_image(jpeg).pixels
    ref = (ref - ref.min()) / (ref.max() - ref.min())  # DICOM without a VOI: full stored range shown
    assert np.abs(img.pixels - ref).max() < 3 / 255  # decoders may differ by rounding only
    assert corr(img.pixels, CHEST) > 0.99


def test_dicom_tolerates_unusable_optional_tags():
    img = check_image(load_image(make_dicom(CHEST_U16, bits_stored=12, WindowCenter=100, WindowWidth=0,
                                            raw_tags={"PixelSpacing": b"abc\\def "})))
    assert img.meta.pixel_spacing is None  # unreadable spacing dropped, not fatal
    assert corr(img.pixels, CHEST) > 0.999  # invalid window (width 0) ignored: full range shown


def test_dicom_without_preamble_implicit_vr():
    data = make_dicom(CHEST_U16, bits_stored=12, preamble=False)
    assert data[128:132] != b"DICM"
    img = check_image(load_image(data))  # no name, no suffix: detected from the tags
    assert img.meta.format == "DICOM"
    np.testing.assert_allclose(img.pixels, load_image(make_dicom(CHEST_U16, bits_stored=12)).pixels, atol=1e-6)


def test_dicom_magic_without_preamble_and_meta_group_first():
    full = make_dicom(CHEST_U16, bits_stored=12)
    ref = load_image(full).pixels
    np.testing.assert_allclose(load_image(full[128:]).pixels, ref, atol=1e-6)  # starts with "DICM"
    np.testing.assert_allclose(load_image(full[132:]).pixels, ref, atol=1e-6)  # starts with (0002,0000)


def test_dicom_large_is_downscaled():
    big = np.asarray(Image.fromarray(CHEST_U8).resize((1700, 2100))).astype(np.uint16) * 16
    img = check_image(load_image(make_dicom(big, bits_stored=12)))
    assert img.meta.downscaled and img.pixels.shape == (1024, 829)
    assert img.meta.original_size == (1700, 2100)


# --- bad inputs ----------------------------------------------------------------------------------


def _png_header(w: int, h: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    b = bytearray(data)
    b[offset] ^= mask
    return bytes(b)


PNG = encode(CHEST_U8, "PNG")
JPEG = encode(CHEST_U8, "JPEG", quality=90)
DCM = make_dicom(CHEST_U16, bits_stored=12)


def _gif(animated: bool) -> bytes:
    frames = [Image.fromarray(CHEST_U8), Image.fromarray(255 - CHEST_U8)]
    buf = io.BytesIO()
    if animated:
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        frames[0].save(buf, "GIF")
    return buf.getvalue()


def _multi(fmt: str) -> bytes:
    buf = io.BytesIO()
    a, b = Image.fromarray(CHEST_U8), Image.fromarray(255 - CHEST_U8)
    a.save(buf, fmt, save_all=True, append_images=[b])
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("chest.png", PNG)
    return buf.getvalue()


def _dicom_no_pixels() -> bytes:
    return make_dicom(CHEST_U16, bits_stored=12, PixelData=None)


def _jpeg_zero_height() -> bytes:
    i = JPEG.index(b"\xff\xc0")  # SOF0: FFC0 len(2) precision(1) height(2) width(2)
    return JPEG[: i + 5] + b"\x00\x00" + JPEG[i + 7 :]


def _dicom_j2k_garbage() -> bytes:
    from pydicom.encaps import encapsulate

    return make_dicom(CHEST_U16, bits_stored=12, transfer_syntax="1.2.840.10008.1.2.4.90",
                      PixelData=encapsulate([b"\xff\x4f\xff\x51" + b"garbage!" * 200]))


def _png_idat_flipped() -> bytes:
    i = PNG.index(b"IDAT")
    return _flip(PNG, i + 4 + 200)  # inside the deflate stream


BAD_INPUTS = [
    # (id, bytes, filename, expected message fragment)
    ("empty", b"", "x.png", r"empty \(0 bytes\)"),
    ("png-truncated-half", PNG[: len(PNG) // 2], "x.png", r"PNG image data is damaged or truncated"),
    ("png-header-only", PNG[:20], "x.png", r"PNG file is damaged: its header"),
    ("png-signature-only", PNG[:8], "x.png", r"PNG file is damaged"),
    ("png-ihdr-crc-flipped", _flip(PNG, 20), "x.png", r"PNG file is damaged: its header"),
    ("png-idat-bitflip", _png_idat_flipped(), "x.png", r"PNG image data is damaged"),
    ("jpeg-truncated", JPEG[: len(JPEG) // 2], "x.jpg", r"JPEG image data is damaged or truncated"),
    ("jpeg-soi-only", JPEG[:4], "x.jpg", r"JPEG file is damaged: its header"),
    ("jpeg-garbage-after-soi", b"\xff\xd8\xff" + bytes(range(256)) * 4, "x.jpg", r"JPEG file is damaged"),
    ("jpeg-zero-height", _jpeg_zero_height(), "x.jpg", r"JPEG file is damaged|has no pixels"),
    ("random-bytes", np.random.default_rng(1).bytes(5000), "x.png", r"not in a recognised image format"),
    ("random-bytes-named-dcm", np.random.default_rng(2).bytes(5000), "x.dcm", r"not a valid DICOM|DICOM file is damaged"),
    ("text-named-png", b"This is the radiology report, not the image.\n" * 20, "x.png", r"contains text, not an image"),
    ("text-starting-with-BM", b"BMI 31. Chest: no focal consolidation.\n" * 5, "x.bmp", r"contains text, not an image"),
    ("text-named-dcm", b"Patient: Jane Doe\nFindings: none\n", "x.dcm", r"contains text, not an image"),
    ("html", b"<!DOCTYPE html><html><body><img src='x.png'></body></html>", "x.png", r"web page \(HTML\)"),
    ("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"></svg>', "x.svg", r"SVG drawings"),
    ("xml", b'<?xml version="1.0"?><report><finding/></report>', "x.xml", r"XML document"),
    ("json", b'{"image": "chest.png", "label": "normal"}', "x.json", r"JSON text document"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "x.pdf", r"PDF document"),
    ("zip", _zip(), "x.zip", r"ZIP archive"),
    ("gzip", __import__("gzip").compress(PNG), "x.png.gz", r"gzip"),
    ("gif-animated", _gif(True), "x.gif", r"GIF images are not supported"),
    ("gif-static", _gif(False), "x.gif", r"GIF images are not supported"),
    ("webp", encode(CHEST_U8, "WEBP"), "x.webp", r"WebP images are not supported"),
    ("heic-header", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100, "x.heic", r"HEIC"),
    ("tiff-two-pages", _multi("TIFF"), "x.tif", r"TIFF file holds 2 images"),
    ("apng-two-frames", _multi("PNG"), "x.png", r"PNG file holds 2 images"),
    ("png-1x1", encode(np.zeros((1, 1), np.uint8), "PNG"), "x.png", r"too small: only 1 x 1 pixels"),
    ("bmp-10x10", encode(np.zeros((10, 10), np.uint8), "BMP"), "x.bmp", r"too small: only 10 x 10"),
    ("png-thin-strip", encode(np.zeros((30, 2000), np.uint8), "PNG"), "x.png", r"too small: only 2000 x 30"),
    ("png-header-20000x20000", _png_header(20000, 20000), "x.png", r"too large.*refused before decoding"),
    ("png-header-11000x10000", _png_header(11000, 10000), "x.png", r"too large: 11000 x 10000 pixels"),
    ("png-header-13000x100", _png_header(13000, 100), "x.png", r"too large: 13000 x 100 pixels"),
    ("dicom-no-pixel-data", _dicom_no_pixels(), "x.dcm", r"DICOM file has no pixel data"),
    ("dicom-multiframe", make_dicom(np.stack([CHEST_U16] * 3), bits_stored=12), "x.dcm", r"holds 3 frames"),
    ("dicom-no-rows", make_dicom(CHEST_U16, bits_stored=12, Rows=None), "x.dcm", r"Rows/Columns missing"),
    ("dicom-pixel-data-truncated", make_dicom(CHEST_U16, bits_stored=12)[:-5000], "x.dcm", r"pixel data could not be decoded"),
    ("dicom-bits-allocated-7", make_dicom(CHEST_U16, bits_stored=7, BitsAllocated=7), "x.dcm", r"invalid Bits Allocated"),
    ("dicom-samples-4", make_dicom(CHEST_U16, bits_stored=12, SamplesPerPixel=4), "x.dcm", r"Samples per Pixel value \(4\)"),
    ("dicom-frames-garbage", make_dicom(CHEST_U16, bits_stored=12, raw_tags={"NumberOfFrames": b"abc "}), "x.dcm", r"invalid NumberOfFrames"),
    ("dicom-photometric-unknown", make_dicom(CHEST_U16, bits_stored=12, PhotometricInterpretation="HSV"), "x.dcm", r"HSV|could not be decoded"),
    ("dicom-header-20000", make_dicom(CHEST_U16, bits_stored=12, Rows=20000, Columns=20000), "x.dcm", r"too large: 20000 x 20000"),
    ("dicom-tiny", make_dicom(np.zeros((32, 32), np.uint16), bits_stored=12), "x.dcm", r"too small: only 32 x 32"),
    ("dicom-zero-rows", make_dicom(CHEST_U16, bits_stored=12, Rows=0), "x.dcm", r"no pixels"),
    ("dicom-header-cut", DCM[:400], "x.dcm", r"no pixel data|DICOM file is damaged"),
    ("dicom-pixel-vr-bitflip", _flip(DCM, DCM.index(b"\xe0\x7f\x10\x00") + 4, 0x20), "x.dcm", r"pixel data could not be decoded"),
    ("dicom-group-bitflip", _flip(DCM, DCM.index(b"\xe0\x7f\x10\x00"), 0x01), "x.dcm", r"DICOM file has no pixel data"),
    ("dicom-cut-mid-header", DCM[:300] + DCM[310:], "x.dcm", r"DICOM file is damaged or incomplete"),
    ("dicom-unknown-transfer-syntax", DCM.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.9\x00", 1), "x.dcm",
     r"could not be decoded \(transfer syntax: 1\.2\.840\.10008\.1\.2\.9\)"),
    ("dicom-jpeg2000-garbage", _dicom_j2k_garbage(), "x.dcm", r"could not be decoded \(transfer syntax: JPEG 2000"),
    ("dicom-rows-exceed-data", make_dicom(CHEST_U16, bits_stored=12, Rows=480), "x.dcm", r"pixel data could not be decoded"),
    ("dicom-bits-stored-20", make_dicom(CHEST_U16, bits_stored=12, BitsStored=20), "x.dcm", r"pixel data could not be decoded"),
    ("dicom-rescale-garbage", make_dicom(CHEST_U16, bits_stored=12, raw_tags={"RescaleSlope": b"x ", "RescaleIntercept": b"0 "}),
     "x.dcm", r"rescale values \(Rescale Slope/Intercept"),
]


@pytest.mark.parametrize("data, name, message", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_specific_message(data, name, message):
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(data, name)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert text and text[0].isupper() and text.rstrip().endswith((".", ")")), text
    assert "Traceback" not in text


def test_bad_suite_is_large_and_messages_vary():
    assert len(BAD_INPUTS) >= 30
    assert len({c[3] for c in BAD_INPUTS}) >= 30


def test_bad_inputs_also_via_path(images):
    path = images.write(b"<html><body>nope</body></html>", "scan.png")
    with pytest.raises(ImageLoadError, match=r"web page"):
        load_image(path)


@pytest.mark.parametrize(
    "source, message",
    [(12345, r"Unsupported input"), ("/nonexistent/dir/chest.png", r"No file was found at 'chest.png'"),
     (io.StringIO("text"), r"opened as text")],
    ids=["int", "missing-path", "text-stream"],
)
def test_bad_sources(source, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(source)


def test_directory_is_refused(tmp_path):
    with pytest.raises(ImageLoadError, match=r"is a folder"):
        load_image(tmp_path)


def test_oversized_file_refused_without_reading(images, monkeypatch):
    monkeypatch.setattr(settings, "MAX_FILE_BYTES", 1000)
    path = images.write(PNG, "big.png")
    with pytest.raises(ImageLoadError, match=r"the limit is"):
        load_image(path)


def test_decompression_bomb_header_refused_without_allocating(monkeypatch):
    data = _png_header(20000, 20000)
    loads = _count_pil_loads(monkeypatch)
    tracemalloc.start()
    with pytest.raises(ImageLoadError, match=r"too large"):
        load_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert loads == [], "refused from the header, before any pixel data was decoded"
    assert peak < 5 * 2**20, f"peak allocation {peak / 2**20:.1f} MB"


def _count_pil_loads(monkeypatch) -> list:
    """Record every PIL decode (ImageFile.load) so a test can assert that none happened."""
    from PIL import ImageFile

    calls: list = []
    original = ImageFile.ImageFile.load

    def load(self, *a, **k):
        calls.append(self.size)
        return original(self, *a, **k)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_real_deflate_bomb_refused(monkeypatch):
    # 12000 x 9000 of zeros compresses to ~100 kB: refused from the header, never inflated
    raw = zlib.compress(b"\x00" * (9000 * 1200), 9)  # only part of the rows is needed to build it
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 9000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    loads = _count_pil_loads(monkeypatch)
    with pytest.raises(ImageLoadError, match=r"too large"):
        load_image(data)
    assert loads == [], "refused from the header: the 108 MP stream was never inflated"


@pytest.mark.parametrize("base_name", ["png", "jpeg", "dicom"])
def test_random_corruption_never_leaks_other_exceptions(base_name):
    base = {"png": PNG, "jpeg": JPEG, "dicom": DCM}[base_name]
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(40):
        b = bytearray(base)
        for off in rng.integers(0, min(len(b), 2000), size=3):
            b[int(off)] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(1, len(b)))]
        try:
            check_image(load_image(bytes(b)))
            outcomes["ok"] += 1
        except ImageLoadError as exc:
            assert str(exc)
            outcomes["refused"] += 1
    assert sum(outcomes.values()) == 40


# --- real data ------------------------------------------------------------------------------------


@requires_cxr3
def test_cxr3_images_load():
    rows = cxr3_rows("test", 20)
    for row in rows:
        img = check_image(load_image(settings.CXR3_DIR / row["path"]), (224, 224))
        assert img.meta.format == "JPEG" and img.meta.colourfulness == 0.0
