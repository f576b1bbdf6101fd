"""Bad input through the real upload path: >= 60 malformed, unusual or non-chest files.

Every input is made here (PIL / pydicom / scikit-learn's bundled photo); nothing is downloaded.
Each one goes through

* the core pipeline exactly as the Diagnose page calls it (dashboard.safe_load -> quality.assess
  -> classify.predict), for every input; and
* the Diagnose page itself (streamlit.testing.v1.AppTest, one session driven through many
  uploads, a valid upload after every few bad ones to show the page keeps working).

Contract: a specific user-facing message for every input, zero exceptions, and the next valid
upload still produces a result.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import chest_phantom, encode, make_dicom, to_uint8, to_uint16
from cxr_core import dashboard, settings

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
GENERIC = "Something went wrong"  # the page's catch-all text: never acceptable for a fuzz input
NOT_CXR = "does not look like a frontal chest X-ray"


@dataclass(frozen=True)
class Case:
    id: str
    name: str  # the uploaded file name (extension may lie)
    data: bytes
    expect: str  # "refused" | "accepted" | "not_cxr" | "any"
    pattern: str = ""  # regex the refusal message must match (refused), case-insensitive


def _flip(data: bytes, seed: int, n: int = 8, start: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    for pos in rng.integers(start, len(b), n):
        b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _set_vr(dcm: bytes, group: int, element: int, vr: bytes) -> bytes:
    """Overwrite the two VR characters of one explicit-VR element (a wrong VR for a valid tag)."""
    i = dcm.index(struct.pack("<HH", group, element), 132)
    return dcm[: i + 4] + vr + dcm[i + 6 :]


def _chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def _photos() -> tuple[np.ndarray, np.ndarray]:
    """(flower.jpg, china.jpg) from scikit-learn (427 x 640 RGB), or synthetic colourful scenes."""
    try:
        from sklearn.datasets import load_sample_images

        china, flower = (np.asarray(im) for im in load_sample_images().images)
        return flower, china
    except Exception:  # scikit-learn missing
        y, x = np.mgrid[0:427, 0:640]
        a = np.dstack([(x % 256), (y % 256), ((x + y) % 256)]).astype(np.uint8)
        return a, a[:, ::-1].copy()


def _hand() -> np.ndarray:
    from cxr_core.gate.ood_inputs import _hand as hand

    return to_uint8(hand(np.random.default_rng(3)))


def _text_page() -> np.ndarray:
    from cxr_core.gate.ood_inputs import _text_page as page

    return page(np.random.default_rng(4))


def _animated_gif() -> bytes:
    frames = [Image.fromarray(to_uint8(chest_phantom(128, s))) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    frames = [Image.fromarray(to_uint8(chest_phantom(128, s))) for s in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _apng() -> bytes:
    frames = [Image.fromarray(to_uint8(chest_phantom(128, s))) for s in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _try_encode(arr, fmt: str, **kw) -> bytes | None:
    try:
        return encode(arr, fmt, **kw)
    except Exception:  # encoder plugin missing in this Pillow build
        return None


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[Case, ...]:
    chest = chest_phantom(256, 0)
    u8, u16 = to_uint8(chest), to_uint16(chest, 12)
    png, jpg = encode(u8, "PNG"), encode(u8, "JPEG", quality=92)
    dcm = make_dicom(u16, bits_stored=12)
    idat = png.index(b"IDAT")
    pix = dcm.index(b"\xe0\x7f\x10\x00")  # PixelData tag
    photo, photo2 = _photos()
    c: list[Case] = [
        # empty and truncated
        Case("empty-png", "empty.png", b"", "refused", r"empty"),
        Case("empty-dcm", "empty.dcm", b"", "refused", r"empty"),
        Case("png-signature-only", "cut.png", png[:8], "refused", r"could not be read|damaged|truncated|not"),
        Case("png-cut-in-ihdr", "cut.png", png[:20], "refused", r"could not be read|damaged|truncated"),
        Case("png-cut-before-idat", "cut.png", png[: idat - 4], "refused", r"could not be read|damaged|truncated|no image"),
        Case("png-cut-in-idat", "cut.png", png[: idat + 200], "refused", r"damaged|truncated"),
        Case("png-cut-half", "cut.png", png[: len(png) // 2], "refused", r"damaged|truncated"),
        Case("png-no-iend", "cut.png", png[:-12], "any"),
        Case("jpeg-soi-only", "cut.jpg", jpg[:3], "refused", r"could not be read|damaged|truncated"),
        Case("jpeg-cut-header", "cut.jpg", jpg[:200], "refused", r"could not be read|damaged|truncated"),
        Case("jpeg-cut-half", "cut.jpg", jpg[: len(jpg) // 2], "refused", r"damaged|truncated"),
        Case("jpeg-no-eoi", "cut.jpg", jpg[:-2], "any"),
        Case("dicom-preamble-only", "cut.dcm", dcm[:132], "refused", r"DICOM|could not be read"),
        Case("dicom-cut-header", "cut.dcm", dcm[:300], "refused", r"DICOM"),
        Case("dicom-cut-pixels", "cut.dcm", dcm[: pix + 2000], "refused", r"DICOM|pixel"),
        Case("dicom-no-pixel-bytes", "cut.dcm", dcm[: pix + 12], "refused", r"DICOM|pixel"),
    ]
    # bit flips (anywhere after the signature, so they are still sniffed as the same format)
    for i in range(4):
        c.append(Case(f"png-bitflip-{i}", "flip.png", _flip(png, i, 6, 8), "any"))
        c.append(Case(f"jpeg-bitflip-{i}", "flip.jpg", _flip(jpg, 10 + i, 6, 3), "any"))
        c.append(Case(f"dicom-bitflip-{i}", "flip.dcm", _flip(dcm, 20 + i, 6, 132), "any"))
    c.append(Case("png-header-bitflip", "flip.png", png[:12] + bytes([png[12] ^ 0x20]) + png[13:], "refused", r"could not be read|damaged"))
    # wrong extensions: the content decides
    c += [
        Case("png-named-jpg", "chest.jpg", png, "accepted"),
        Case("jpeg-named-png", "chest.png", jpg, "accepted"),
        Case("dicom-named-png", "chest.png", dcm, "accepted"),
        Case("png-named-dcm", "chest.dcm", png, "accepted"),
        Case("text-named-png", "notes.png", b"Patient seen today, chest clear.\n" * 20, "refused", r"text"),
        Case("random-bytes-named-dcm", "random.dcm", np.random.default_rng(0).bytes(4096), "refused", r"DICOM|not"),
        Case("random-bytes", "random.png", np.random.default_rng(1).bytes(4096), "refused", r"not|unsupported|recognis"),
    ]
    # sizes
    c += [
        Case("png-header-20000x20000", "bomb.png", _png_header(20000, 20000), "refused", r"too large"),
        Case("png-header-13000x100", "wide.png", _png_header(13000, 100), "refused", r"too large"),
        Case("png-tiny-10x10", "tiny.png", encode(u8[:10, :10], "PNG"), "refused", r"too small"),
        Case("png-strip-4000x40", "strip.png", encode(np.tile(u8[:40], (1, 16)), "PNG"), "refused", r"too small"),
        Case("png-panorama-1600x400", "pano.png", encode(np.tile(u8[:200], (2, 8))[:400, :1600], "PNG"), "any"),
        Case("jpeg-large-5000x4000", "big.jpg", encode(np.asarray(Image.fromarray(u8).resize((5000, 4000))), "JPEG", quality=80), "accepted"),
    ]
    # bit depths and colour models
    flat16 = np.full((256, 256), 1234, np.uint16)
    cmyk = Image.fromarray(u8).convert("CMYK")
    pal = Image.fromarray(u8).convert("P")
    c += [
        Case("png-16bit", "deep.png", encode(Image.fromarray(to_uint16(chest, 16)), "PNG"), "accepted"),
        Case("png-16bit-flat", "flat16.png", encode(Image.fromarray(flat16), "PNG"), "accepted"),
        Case("tiff-16bit", "deep.tif", encode(Image.fromarray(u16), "TIFF"), "accepted"),
        Case("tiff-float-nan", "nan.tif", encode(Image.fromarray(np.where(chest > 0.9, np.nan, chest).astype(np.float32)), "TIFF"), "accepted"),
        Case("jpeg-cmyk", "cmyk.jpg", encode(cmyk, "JPEG"), "accepted"),
        Case("png-palette", "palette.png", encode(pal, "PNG"), "accepted"),
        Case("png-1bit", "bilevel.png", encode(Image.fromarray(u8).convert("1"), "PNG"), "any"),
        Case("png-rgba-transparent", "alpha.png", encode(np.dstack([u8, u8, u8, np.zeros_like(u8)]), "PNG"), "any"),
        Case("png-all-black", "black.png", encode(np.zeros((256, 256), np.uint8), "PNG"), "any"),
        Case("png-all-white", "white.png", encode(np.full((256, 256), 255, np.uint8), "PNG"), "any"),
        Case("bmp", "chest.bmp", encode(u8, "BMP"), "accepted"),
    ]
    # unsupported containers
    c += [
        Case("gif-animated", "anim.gif", _animated_gif(), "refused", r"GIF"),
        Case("gif-static", "still.gif", encode(u8, "GIF"), "refused", r"GIF"),
        Case("gif-named-png", "anim.png", _animated_gif(), "refused", r"GIF"),
        Case("tiff-multipage", "pages.tif", _multipage_tiff(), "refused", r"page|frame"),
        Case("apng", "anim.png", _apng(), "refused", r"animat|frame"),
        Case("pdf", "report.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n", "refused", r"PDF"),
        Case("pdf-named-png", "report.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 500, "refused", r"PDF"),
        Case("svg", "drawing.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
             b'<circle cx="50" cy="50" r="40"/><script>alert(1)</script></svg>', "refused", r"SVG"),
        Case("svg-named-png", "drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="9" height="9"/></svg>', "refused", r"SVG"),
        Case("html", "page.png", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "refused", r"HTML|web page"),
        Case("json", "data.png", b'{"image": [1, 2, 3]}', "refused", r"JSON|text"),
        Case("zip", "archive.png", b"PK\x03\x04" + b"\x00" * 200, "refused", r"ZIP|archive|compressed"),
        Case("gzip", "archive.dcm", b"\x1f\x8b\x08\x00" + b"\x00" * 200, "refused", r"gzip|archive|compressed"),
        Case("ico", "favicon.png", b"\x00\x00\x01\x00\x01\x00" + b"\x00" * 300, "refused", r"icon|ICO|not supported"),
    ]
    webp = _try_encode(u8, "WEBP")
    if webp:
        c.append(Case("webp", "photo.webp", webp, "refused", r"WebP"))
    # photographs and non-chest images: decodable, must be flagged by the quality gate
    c += [
        Case("photo-colour-jpeg", "holiday.jpg", encode(photo, "JPEG", quality=90), "not_cxr"),
        Case("photo-muted-colour-jpeg", "temple.jpg", encode(photo2, "JPEG", quality=90), "not_cxr"),
        Case("photo-grey-png", "holiday.png", encode(np.asarray(Image.fromarray(photo).convert("L")), "PNG"), "not_cxr"),
        Case("hand-radiograph", "hand.png", encode(_hand(), "PNG"), "not_cxr"),
        Case("text-document", "letter.png", encode(_text_page(), "PNG"), "not_cxr"),
        Case("noise", "noise.png", encode(np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8), "PNG"), "not_cxr"),
        Case("checkerboard", "board.png", encode(((np.indices((320, 320)).sum(0) // 32 % 2) * 255).astype(np.uint8), "PNG"), "not_cxr"),
    ]
    # DICOM: wrong VRs, missing tags
    c += [
        Case("dicom-valid", "study.dcm", dcm, "accepted"),
        Case("dicom-no-preamble", "study.dcm", make_dicom(u16, bits_stored=12, preamble=False), "accepted"),
        Case("dicom-rows-vr-ds", "study.dcm", _set_vr(dcm, 0x0028, 0x0010, b"DS"), "any"),
        Case("dicom-bits-allocated-vr-zz", "study.dcm", _set_vr(dcm, 0x0028, 0x0100, b"ZZ"), "refused",
             r"DICOM header is damaged.*\(0028,0100\).*unknown value representation"),
        Case("dicom-photometric-vr-us", "study.dcm", _set_vr(dcm, 0x0028, 0x0004, b"US"), "any"),
        Case("dicom-pixeldata-vr-us", "study.dcm", _set_vr(dcm, 0x7FE0, 0x0010, b"US"), "any"),
        Case("dicom-columns-text", "study.dcm", make_dicom(u16, bits_stored=12, raw_tags={"Columns": b"xyz "}), "refused", r"Columns|DICOM|too large"),
        Case("dicom-missing-rows", "study.dcm", make_dicom(u16, bits_stored=12, Rows=None), "refused", r"Rows|size|DICOM"),
        Case("dicom-missing-pixeldata", "study.dcm", make_dicom(u16, bits_stored=12, PixelData=None), "refused", r"no pixel data"),
        Case("dicom-bits-allocated-13", "study.dcm", make_dicom(u16, bits_stored=12, BitsAllocated=13), "refused", r"Bits Allocated|DICOM"),
        Case("dicom-window-text", "study.dcm", make_dicom(u16, bits_stored=12, raw_tags={"WindowCenter": b"abc ", "WindowWidth": b"xy"}), "any"),
        Case("dicom-multiframe", "study.dcm", make_dicom(np.stack([u16, u16]), bits_stored=12), "refused", r"frames"),
        Case("dicom-missing-photometric", "study.dcm", make_dicom(u16, bits_stored=12, PhotometricInterpretation=None), "accepted"),
        Case("dicom-photometric-hsv", "study.dcm", make_dicom(u16, bits_stored=12, PhotometricInterpretation="HSV"), "refused", r"HSV|photometric|decoded"),
        Case("dicom-rescale-garbage", "study.dcm", make_dicom(u16, bits_stored=12, raw_tags={"RescaleSlope": b"x ", "RescaleIntercept": b"0 "}), "refused", r"Rescale"),
        Case("dicom-window-width-zero", "study.dcm", make_dicom(u16, bits_stored=12, WindowCenter=2048, WindowWidth=0), "accepted"),
        Case("dicom-monochrome1", "study.dcm", make_dicom(u16, bits_stored=12, PhotometricInterpretation="MONOCHROME1"), "any"),
        Case("dicom-modality-ct-tiny", "study.dcm", make_dicom(np.zeros((16, 16), np.uint16), bits_stored=12, Modality="CT"), "refused", r"too small"),
        Case("dicom-header-huge", "study.dcm", make_dicom(u16, bits_stored=12, Rows=30000, Columns=30000), "refused", r"too large"),
    ]
    ids = [x.id for x in c]
    assert len(ids) == len(set(ids))
    return tuple(c)


CASES = corpus()


def test_corpus_is_large_enough():
    assert len(CASES) >= 60, len(CASES)
    kinds = {c.expect for c in CASES}
    assert kinds == {"refused", "accepted", "not_cxr", "any"}


# --- core pipeline (every input) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers():
    """(stand-in, trained or None). The stand-in is a tiny network behind the real Classifier /
    classify.predict code path (preprocessing, calibration, abstention) so every decodable input
    can be predicted cheaply; the trained V-BreathNet (weights/vbreathnet.pt, when it exists) runs
    on every third decodable input."""
    import torch
    from torch import nn

    from cxr_core.models import SPECS, Classifier, ModelUnavailableError, load_classifier

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, len(settings.CLASSES))).eval()
    stand_in = Classifier("vbreathnet", SPECS["vbreathnet"], tiny, settings.VBREATHNET_SIZE, 1.0)
    try:
        trained = load_classifier("vbreathnet")
    except (ModelUnavailableError, OSError, RuntimeError, KeyError):
        trained = None
    return stand_in, trained


def pipeline(case: Case, clf) -> dict:
    """What the Diagnose page does with an upload, without Streamlit."""
    from cxr_core import classify, quality

    image, error = dashboard.safe_load(case.data, case.name)
    if error:
        return {"stage": "load", "message": error}
    rep = quality.assess(image)
    pred = classify.predict(image, clf, quality=rep)
    return {"stage": "done", "image": image, "quality": rep, "prediction": pred}


_DECODABLE_SEEN: list[str] = []


def _ood_ready() -> bool:
    from cxr_core import ood

    return ood.available()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_core_pipeline_gives_specific_message(case, classifiers):
    stand_in, trained = classifiers
    clf = stand_in
    if trained is not None and dashboard.safe_load(case.data, case.name)[1] is None:
        _DECODABLE_SEEN.append(case.id)
        clf = trained if len(_DECODABLE_SEEN) % 3 == 1 else stand_in
    out = pipeline(case, clf)
    if out["stage"] == "load":
        msg = out["message"]
        assert case.expect in ("refused", "any"), f"{case.id} was refused: {msg}"
        assert isinstance(msg, str) and len(msg) > 20 and msg.strip()[-1] in ".)!", msg
        assert GENERIC not in msg and "unexpected error" not in msg and "Traceback" not in msg, msg
        if case.pattern:
            assert re.search(case.pattern, msg, re.I), (case.id, msg)
        return
    assert case.expect in ("accepted", "not_cxr", "any"), f"{case.id} should have been refused"
    rep, pred = out["quality"], out["prediction"]
    assert rep.verdict in ("pass", "warn", "fail")
    if rep.verdict != "pass":
        assert rep.reasons and all(isinstance(r, str) and r for r in rep.reasons), rep
    assert set(pred.probabilities) == set(settings.CLASSES)
    assert all(np.isfinite(v) for v in pred.probabilities.values())
    if not rep.ok:  # a failed gate always abstains, and says why
        assert pred.abstained and any("Image quality check failed" in r for r in pred.reasons)
    if case.expect == "not_cxr":
        if case.id == "photo-colour-jpeg":  # colourfulness alone fails it, with or without OOD weights
            assert not rep.ok and "colourfulness" in rep.failed
        if _ood_ready():
            assert not rep.ok and any(NOT_CXR in r for r in rep.reasons), (case.id, rep.reasons, rep.plausibility)
        else:
            assert rep.plausibility is None


# --- the Diagnose page (one AppTest session, many uploads) ------------------------------------------


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def page_weights(tmp_path, monkeypatch):
    """Fixture V-BreathNet; the real OOD statistics only when the valid upload is a real CXR."""
    from app_fixtures import page_weights, real_cxr3_image

    yield from page_weights(tmp_path, monkeypatch, copy_ood=real_cxr3_image() is not None)


def _texts(at, kind: str) -> str:
    return "\n".join(str(e.value) for e in getattr(at, kind))


def _mime(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "dcm": "application/dicom"}.get(ext, "application/octet-stream")


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="dx_upload").set_value([(name, data, _mime(name))]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _assert_valid_result(at) -> None:
    assert at.image, "the valid image is shown"
    assert "Image quality" in [s.value for s in at.subheader]
    shown = {m.label for m in at.metric}
    assert "Suggested class" in shown or "the model abstains" in _texts(at, "warning"), "a result is shown"
    assert not _texts(at, "error"), _texts(at, "error")


# Decodable inputs render the whole page (quality, prediction, report): a representative subset of
# them goes through AppTest; every refused input does (the page stops right after the message).
PAGE_ACCEPTED = {"png-16bit", "jpeg-cmyk", "png-palette", "dicom-no-preamble", "dicom-window-width-zero",
                 "photo-colour-jpeg", "photo-grey-png", "hand-radiograph", "text-document", "png-all-black",
                 "jpeg-large-5000x4000", "tiff-float-nan"}


def test_diagnose_page_survives_every_fuzz_input(page_weights):
    from streamlit.testing.v1 import AppTest

    from app_fixtures import chest_png_bytes, real_cxr3_image

    # A real radiograph when the shared data is there (the synthetic phantom is, rightly, not
    # plausible to the OOD check, so page_weights only enables that check in that case).
    valid = real_cxr3_image() or ("valid_chest.png", chest_png_bytes(256))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    _assert_valid_result(_upload(at, *valid))
    driven = 0
    for i, case in enumerate(CASES):
        _, load_error = dashboard.safe_load(case.data, case.name)
        if load_error is None and case.id not in PAGE_ACCEPTED:
            continue
        at = _upload(at, case.name, case.data)
        driven += 1
        errors = _texts(at, "error")
        assert GENERIC not in errors and "Traceback" not in errors, (case.id, errors)
        if load_error is not None:  # refused at load: a specific error naming the file, nothing else shown
            shown = getattr(dashboard, "md_escape", str)(case.name)  # the page escapes markdown in names
            assert f"**{shown}** could not be used:" in errors, (case.id, errors)
            assert not at.image and not at.metric
            if case.pattern:
                assert re.search(case.pattern, errors, re.I), (case.id, errors)
        else:  # decoded: the quality verdict is always shown
            verdicts = _texts(at, "success") + _texts(at, "warning") + errors
            assert re.search(r"\*\*(Pass|Check the image|Not suitable for analysis)\.\*\*", verdicts), (case.id, verdicts)
            if case.expect == "not_cxr" and _ood_ready():
                assert NOT_CXR in errors, (case.id, errors)
                assert "the model abstains" in _texts(at, "warning")
                assert "Suggested class" not in {m.label for m in at.metric}
        if i % 6 == 5:  # the page keeps working for the next valid upload
            _assert_valid_result(_upload(at, *valid))
    assert driven >= 40, driven
    _assert_valid_result(_upload(at, *valid))
