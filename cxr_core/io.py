"""Reading chest X-rays from files or uploaded bytes into one normalised form.

Every reader ends in the same `CXRImage` (float32, 2-D, [0, 1]) so that the quality checks,
preprocessing and models never see format quirks. Every failure is an `ImageLoadError` whose
message a clinician can act on; no other exception type leaves `load_image`.
"""

from __future__ import annotations

import io as _io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from struct import error as struct_error
from typing import Any, BinaryIO, Callable, Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_core import settings

Source = Union[str, Path, bytes, bytearray, memoryview, BinaryIO]

# Formats PIL may hand us that are radiographs in practice. GIF, WebP, ICO, PDF... are refused.
_PIL_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "TIFF"}
# DICOM tags that identify a patient or study; kept out of metadata unless asked for.
_IDENTIFIER_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "InstitutionName",
    "ReferringPhysicianName",
)


class ImageLoadError(ValueError):
    """The input cannot be used as a chest X-ray; the message is meant for the user."""


@dataclass(frozen=True)
class ImageMeta:
    """What we know about the file, minus patient identifiers unless they were requested."""

    format: str
    original_size: tuple[int, int]  # (width, height) as stored in the file
    bit_depth: int
    photometric: str
    channels: int = 1
    downscaled: bool = False
    had_alpha: bool = False
    colourfulness: float = 0.0  # mean chroma of the source in [0, 1]; photographs score high
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None  # DICOM BodyPartExamined
    pixel_spacing: tuple[float, float] | None = None
    identifiers: dict[str, str] = field(default_factory=dict)
    # Coarse band from DICOM PatientAge (settings.AGE_GROUPS), kept even when identifiers are not:
    # the classifier needs it to know whether a call is inside its training population.
    age_group: str | None = None
    # Real units for the viewer (issue #19). `pixels` came from the modality values v (stored values
    # after Rescale Slope/Intercept or the Modality LUT) by the linear map v = lo + p * (hi - lo), with
    # (lo, hi) = value_range: the value shown black (p = 0) and the value shown white (p = 1). It is
    # reversed (lo > hi) for MONOCHROME1, which is inverted so that dense is bright. None where the
    # decoder's map is not linear (VOI LUT, sigmoid window) or the film is flat: no real units then.
    value_range: tuple[float, float] | None = None
    units: str = ""  # of value_range and window_presets: RescaleType ("HU", "OD", ...); "" = pixel value
    # (name, centre, width) of every WindowCenter/WindowWidth pair in the DICOM header, in `units`;
    # names from WindowCenterWidthExplanation, else "Header 1", "Header 2", ...
    window_presets: tuple[tuple[str, float, float], ...] = ()
    voi_function: str = "LINEAR"  # the header's VOILUTFunction: how its windows are defined
    # What the decoder mapped onto 0..1: "header window 1" (linear; "header window 1 (SIGMOID)" etc.
    # where it has no linear inverse), "VOI LUT", "full range" (min-max stretch), "fixed 8-bit"
    # (PNG/JPEG/BMP: absolute 0..255 scale) or "" (colour DICOM, by bit depth).
    voi_applied: str = ""


@dataclass(frozen=True)
class CXRImage:
    """A decoded radiograph: `pixels` is float32, shape (H, W), values in [0, 1], bright = dense."""

    pixels: np.ndarray
    meta: ImageMeta
    filename: str | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def to_uint8(self) -> np.ndarray:
        return np.clip(np.rint(self.pixels * 255.0), 0, 255).astype(np.uint8)


def load_image(
    source: Source, filename: str | None = None, *, include_identifiers: bool = False
) -> CXRImage:
    """Decode a path or raw bytes (PNG, JPEG, BMP, TIFF or DICOM) into a `CXRImage`.

    `source` may be a path, the file's bytes, or a binary file object (such as Streamlit's
    `UploadedFile`). Raises `ImageLoadError` with a user-facing message for anything that is not
    a usable image; no other exception type leaves this function.
    """
    try:
        data, name = _read_bytes(source, filename)
        kind = _sniff(data)
        if kind in _PIL_FORMATS:
            return _load_pil(data, name, kind)
        if kind == "DICOM" or (kind is None and _suffix(name) in {".dcm", ".dicom"}):
            return _load_dicom(data, name, include_identifiers)
        raise ImageLoadError(_unsupported_message(kind, data, name))
    except ImageLoadError:
        raise
    except (MemoryError, Image.DecompressionBombError):
        raise ImageLoadError(
            "The image is too large to process on this machine and was refused."
        ) from None
    except RecursionError:
        raise ImageLoadError("The file is malformed (its structure is nested too deeply).") from None
    except Exception as exc:  # never let a decoder's own exception reach the user
        vr = re.search(r"Unknown Value Representation '([^']*)' in tag (\(\w{4},\w{4}\))", str(exc))
        if vr:  # pydicom met a header element whose type code is not a DICOM one
            raise ImageLoadError(
                f"The DICOM header is damaged: element {vr.group(2)} has an unknown value "
                f"representation '{vr.group(1)}', so the image description cannot be read."
            ) from None
        raise ImageLoadError(
            f"The file could not be read as an image ({type(exc).__name__}). "
            "It may be corrupt or truncated."
        ) from exc


def check_each(paths: Iterable[Source], judge: Callable[[Source, CXRImage], bool]) -> int:
    """Loop of the `check` CLIs: exit status 1 if any file is unreadable or judged bad, else 0.

    `judge` prints its own verdict line; unreadable files get io's user-facing reason.
    """
    status = 0
    for p in paths:
        try:
            image = load_image(p)
        except ImageLoadError as exc:
            print(f"{p}: unreadable: {exc}")
            status = 1
            continue
        status = max(status, 0 if judge(p, image) else 1)
    return status


# --- bytes ---------------------------------------------------------------------------------


def _read_bytes(source: Source, filename: str | None) -> tuple[bytes, str | None]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageLoadError(f"'{path.name}' is a folder, not an image file.")
        if not path.is_file():
            raise ImageLoadError(f"No file was found at '{path.name}'.")
        try:
            _check_file_size(path.stat().st_size)
            data = path.read_bytes()
        except PermissionError:
            raise ImageLoadError(f"The file '{path.name}' could not be opened (permission denied).") from None
        except OSError as exc:
            raise ImageLoadError(f"The file '{path.name}' could not be read from disk ({exc.strerror or exc}).") from None
        _check_file_size(len(data))
        return data, filename or path.name
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        filename = filename or _basename(getattr(source, "name", None))
        if hasattr(source, "getvalue"):  # BytesIO / Streamlit UploadedFile: whole buffer, any position
            data = source.getvalue()
        else:
            if hasattr(source, "seek"):
                try:
                    source.seek(0)
                except (OSError, ValueError):
                    pass
            data = source.read(settings.MAX_FILE_BYTES + 1)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageLoadError("The upload did not contain binary image data (it was opened as text).")
        data = bytes(data)
    else:
        raise ImageLoadError("Unsupported input: give a file path or the file's bytes.")
    _check_file_size(len(data))
    return data, filename


def _basename(name: object) -> str | None:
    return Path(name).name if isinstance(name, str) and name else None


def _suffix(name: str | None) -> str:
    return Path(name).suffix.lower() if name else ""


def _check_file_size(n: int) -> None:
    if n == 0:
        raise ImageLoadError("The file is empty (0 bytes).")
    if n > settings.MAX_FILE_BYTES:
        raise ImageLoadError(
            f"The file is {n / 2**20:.0f} MB; the limit is {settings.MAX_FILE_BYTES / 2**20:.0f} MB."
        )


# --- format sniffing -----------------------------------------------------------------------


_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}


def _sniff(data: bytes) -> str | None:
    """Identify the container from its magic bytes (never from the file name)."""
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM") and len(data) >= 26 and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] in (b"II+\x00", b"MM\x00+"):
        return "BIGTIFF"
    if _looks_like_dicom(data):
        return "DICOM"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftypheif", b"ftyphevc"):
        return "HEIC"
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "ZIP"
    if head.startswith(b"\x1f\x8b"):
        return "GZIP"
    if head.startswith(b"Rar!") or head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "ARCHIVE"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    text = _as_text(data[:4096])
    if text is not None:
        low = text.lstrip("\ufeff \t\r\n").lower()
        if "<svg" in low[:2048]:
            return "SVG"
        if low.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in low[:1024]:
            return "HTML"
        if low.startswith("<?xml"):
            return "XML"
        if low.startswith(("{", "[")):
            return "JSON"
        return "TEXT"
    return None


def _as_text(chunk: bytes) -> str | None:
    if not chunk or b"\x00" in chunk:
        return None
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a cut in the middle of a multi-byte character at the end of the chunk
            text = chunk[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return text if printable >= 0.95 * max(len(text), 1) else None


_UNSUPPORTED = {
    "GIF": "GIF images are not supported (they hold at most 256 grey levels and may be animated). "
    "Upload the original PNG, JPEG or DICOM.",
    "WEBP": "WebP images are not supported. Upload a PNG, JPEG, BMP, TIFF or DICOM file.",
    "HEIC": "HEIC/AVIF photos (iPhone format) are not supported. Export the image as JPEG or PNG.",
    "JPEG2000": "Stand-alone JPEG 2000 files are not supported (JPEG 2000 inside DICOM is). "
    "Upload a PNG, JPEG or DICOM file.",
    "BIGTIFF": "BigTIFF files are not supported. Save the image as a normal TIFF, PNG or DICOM.",
    "PDF": "This is a PDF document, not an image. Export the radiograph itself as PNG, JPEG or DICOM.",
    "ZIP": "This is a ZIP archive. Extract it and upload a single image file.",
    "GZIP": "This is a compressed (gzip) archive. Extract it and upload a single image file.",
    "ARCHIVE": "This is a compressed archive (RAR/7z). Extract it and upload a single image file.",
    "PSD": "Photoshop (PSD) files are not supported. Export the image as PNG or JPEG.",
    "ICO": "Icon (ICO) files are not supported. Upload a PNG, JPEG, BMP, TIFF or DICOM file.",
    "SVG": "SVG drawings are vector graphics, not radiographs. Upload a PNG, JPEG, BMP, TIFF or DICOM file.",
    "HTML": "This file is a web page (HTML), not an image. Save the image itself, not the page.",
    "XML": "This file is an XML document, not an image.",
    "JSON": "This file is a JSON text document, not an image.",
    "TEXT": "This file contains text, not an image.",
}


def _unsupported_message(kind: str | None, data: bytes, name: str | None) -> str:
    if kind in _UNSUPPORTED:
        return _UNSUPPORTED[kind]
    return (
        "This file is not in a recognised image format. "
        "Upload a PNG, JPEG, BMP, TIFF or DICOM file."
    )


_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}


def _looks_like_dicom(data: bytes) -> bool:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if data[:4] == b"DICM":  # magic without the 128-byte preamble
        return True
    # Preamble-less dataset: starts with a little-endian (0002,xxxx) or (0008,xxxx) tag followed
    # by an explicit VR, or by a small implicit-VR length.
    if len(data) < 12 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    length = int.from_bytes(data[4:8], "little")
    return data[2:4] != b"\x00\x00" and 0 < length <= min(1024, len(data))


def _check_dimensions(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError("The image has no pixels (its width or height is 0).")
    if max(width, height) > settings.MAX_IMAGE_SIDE or width * height > settings.MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"The image is too large: {width} x {height} pixels; the limit is "
            f"{settings.MAX_IMAGE_SIDE} pixels per side and "
            f"{settings.MAX_IMAGE_PIXELS // 1_000_000} megapixels. It was refused before decoding."
        )
    if min(width, height) < settings.MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"The image is too small: only {width} x {height} pixels; at least "
            f"{settings.MIN_IMAGE_SIDE} pixels per side are needed to read a chest X-ray."
        )


# --- PNG / JPEG / BMP / TIFF -----------------------------------------------------------------


def _load_pil(data: bytes, name: str | None, kind: str) -> CXRImage:
    with warnings.catch_warnings():
        # Our own size limits (checked right after the header is parsed) replace PIL's warning;
        # PIL still raises DecompressionBombError for headers above twice its limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            im = Image.open(_io.BytesIO(data), formats=[kind])
        except Image.DecompressionBombError:
            raise ImageLoadError(
                "The image is too large: its header claims more than "
                f"{2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels "
                "(a possible decompression bomb). It was refused before decoding."
            ) from None
        except (UnidentifiedImageError, SyntaxError, OSError, ValueError, EOFError) as exc:
            raise ImageLoadError(
                f"The {kind} file is damaged: its header could not be read "
                "(it may be truncated or corrupted in transfer)."
            ) from exc
        fmt = (im.format or kind).upper()
        width, height = im.size
        _check_dimensions(width, height)
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1 and fmt != "MPO":
            raise ImageLoadError(
                f"The {fmt} file holds {n_frames} images (pages/frames); upload a single radiograph."
            )
        if fmt in {"JPEG", "MPO"}:
            # Let libjpeg decode at a reduced scale (1/2..1/8): cheap downscaling of huge scans.
            im.draft("L" if im.mode == "L" else None, (settings.WORKING_SIDE, settings.WORKING_SIDE))
        try:
            im.load()
        except Image.DecompressionBombError:
            raise ImageLoadError("The image is too large and was refused.") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
            raise ImageLoadError(
                f"The {fmt} image data is damaged or truncated and could not be decoded completely."
            ) from exc
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        pass
    mode = im.mode
    bit_depth = _pil_bit_depth(im)
    had_alpha = mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (mode == "P" and "transparency" in im.info)
    photometric = _photometric_from_mode(mode)
    im = _reduce_large(im)
    arr, channels, colourfulness = _pil_to_gray(im)
    pixels, value_range = _normalise_with_range(arr, 8 if bit_depth == 8 else 16)
    pixels, downscaled = _downscale(pixels)
    meta = ImageMeta(
        format="JPEG" if fmt == "MPO" else fmt,
        original_size=(width, height),
        bit_depth=bit_depth,
        photometric=photometric,
        channels=channels,
        downscaled=downscaled or max(width, height) > max(pixels.shape),
        had_alpha=had_alpha,
        colourfulness=colourfulness,
        # 8-bit data keeps its absolute 0..255 scale; deeper data is min-max stretched (see
        # _normalise), so its range is the film's own min..max, not 0..2**bit_depth - 1.
        value_range=value_range,
        units="",
        voi_applied="fixed 8-bit" if bit_depth == 8 else "full range",
    )
    return CXRImage(pixels=pixels, meta=meta, filename=name)


def _pil_bit_depth(im: Image.Image) -> int:
    mode = im.mode
    if mode.startswith("I;16"):
        return 16
    if mode == "I":  # 32-bit integer TIFF, or 16-bit data widened by PIL
        return 32 if im.format == "TIFF" else 16
    if mode == "F":
        return 32
    if mode == "1":
        return 1
    return 8


def _photometric_from_mode(mode: str) -> str:
    if mode in {"L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1"}:
        return "MONOCHROME2"
    if mode in {"P", "PA"}:
        return "PALETTE"
    if mode == "CMYK":
        return "CMYK"
    if mode == "YCbCr":
        return "YBR_FULL"
    return "RGB"


def _reduce_large(im: Image.Image) -> Image.Image:
    """Integer box-reduce very large images in PIL (C, uint8) before any float conversion."""
    factor = max(im.size) // settings.WORKING_SIDE
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in {"P", "PA"}:
        im = im.convert("RGBA" if (im.mode == "PA" or "transparency" in im.info) else "RGB")
    try:
        return im.reduce(factor)
    except (ValueError, NotImplementedError):
        return im


def _pil_to_gray(im: Image.Image) -> tuple[np.ndarray, int, float]:
    """Return (2-D array, source channel count, colourfulness); alpha is flattened onto black."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in {"LA", "La", "PA"}:
        im = im.convert("RGBA")
    elif mode == "1":
        return np.asarray(im.convert("L"), dtype=np.float32), 1, 0.0
    elif mode in {"I;16", "I;16L", "I;16B", "I;16N"}:
        return np.asarray(im).astype(np.float32), 1, 0.0
    elif mode in {"I", "F", "L"}:
        return np.asarray(im, dtype=np.float32), 1, 0.0
    elif mode not in {"RGB", "RGBA"}:  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa, ...
        im = im.convert("RGB")
    mode = im.mode
    arr = np.asarray(im)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.dtype != np.uint8:
        raise ImageLoadError(f"The image uses an unsupported pixel layout ({mode}).")
    # Per-channel views: reductions over the last (size-3) axis are slow in numpy.
    r, g, b = (arr[..., i].astype(np.float32) for i in range(3))
    if mode == "RGBA":  # transparent areas become black background
        alpha = arr[..., 3].astype(np.float32) * (1.0 / 255.0)
        r, g, b = r * alpha, g * alpha, b * alpha
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    return gray, 3, float(chroma.mean(dtype=np.float64) / 255.0)


def _normalise(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map to [0, 1]. 8-bit keeps its absolute scale; deeper data is min-max stretched because
    12-bit detectors store in 16-bit containers and an absolute /65535 would look black."""
    return _normalise_with_range(arr, bit_depth)[0]


def _normalise_with_range(arr: np.ndarray, bit_depth: int) -> tuple[np.ndarray, tuple[float, float] | None]:
    """`_normalise`, and the input values that became 0 and 1 (ImageMeta.value_range); None if flat."""
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if bit_depth == 8:
        return np.clip(arr / 255.0, 0.0, 1.0).astype(np.float32, copy=False), (0.0, 255.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32), None
    return ((arr - lo) / (hi - lo)).astype(np.float32), (lo, hi)


def _downscale(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    h, w = pixels.shape
    long_side = max(h, w)
    if long_side <= settings.WORKING_SIDE:
        return np.ascontiguousarray(pixels, dtype=np.float32), False
    import cv2  # local: only needed for large inputs

    scale = settings.WORKING_SIDE / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(np.ascontiguousarray(pixels, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0), True


# --- DICOM -------------------------------------------------------------------------------------


def age_group_for_years(years: float) -> str:
    """Map an age to the training data's groups: only adults and children aged 1-5 were seen."""
    low, high = settings.PAEDIATRIC_AGE_YEARS
    if years >= settings.ADULT_AGE_YEARS:
        return "adult"
    return "paediatric" if low <= years < high + 1 else "other"


_AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def _dicom_age_group(value: Any) -> str | None:
    """PatientAge is an Age String, nnnD / nnnW / nnnM / nnnY; anything else counts as not given."""
    text = str(value or "").strip().upper()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in _AGE_UNITS:
        return None
    return age_group_for_years(int(text[:3]) / _AGE_UNITS[text[3]])


def _load_dicom(data: bytes, name: str | None, include_identifiers: bool) -> CXRImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every non-conformant tag
        return _load_dicom_inner(data, name, include_identifiers)


def _load_dicom_inner(data: bytes, name: str | None, include_identifiers: bool) -> CXRImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if data[:4] == b"DICM":
        data = b"\x00" * 128 + data
    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=True)
        ds.get("PixelData")  # reading is lazy for some elements: touch the essentials now
        ds.get("Rows")
        ds.get("Columns")
    except InvalidDicomError:
        raise ImageLoadError("This file is not a valid DICOM file.") from None
    except Exception as exc:
        raise ImageLoadError(
            "The DICOM file is damaged (its header could not be parsed) and could not be read."
        ) from exc
    if not _has_pixel_data(ds):
        if "Rows" not in ds and "SOPClassUID" not in ds and "Modality" not in ds:
            if data[128:132] == b"DICM":
                raise ImageLoadError(
                    "The DICOM file is damaged or incomplete: no image attributes could be read."
                )
            raise ImageLoadError("This file is not a valid DICOM file (no image attributes were found).")
        raise ImageLoadError(
            "The DICOM file has no pixel data (it may be a report, a structured document or a "
            "presentation state, not an image)."
        )
    frames = _int_tag(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise ImageLoadError(f"The DICOM file holds {frames} frames; upload a single-frame radiograph.")
    rows, cols = _int_tag(ds, "Rows", None), _int_tag(ds, "Columns", None)
    if rows is None or cols is None:
        raise ImageLoadError("The DICOM file does not state the image size (Rows/Columns missing).")
    _check_dimensions(cols, rows)
    samples = _int_tag(ds, "SamplesPerPixel", 1)
    bits_allocated = _int_tag(ds, "BitsAllocated", None)
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise ImageLoadError(
            f"The DICOM file has an invalid Bits Allocated value ({ds.get('BitsAllocated')}); "
            "the pixel data cannot be interpreted."
        )
    if samples not in (1, 3):
        raise ImageLoadError(f"The DICOM file has an unsupported Samples per Pixel value ({samples}).")
    _ensure_transfer_syntax(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if "PhotometricInterpretation" not in ds:
        ds.PhotometricInterpretation = photometric if samples == 1 else "RGB"
        photometric = str(ds.PhotometricInterpretation)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name_ = getattr(syntax, "name", str(syntax))
        raise ImageLoadError(
            f"The DICOM pixel data could not be decoded (transfer syntax: {name_}). "
            "The file may be damaged or use a compression this installation cannot read."
        ) from exc
    colourfulness = 0.0
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageLoadError("The DICOM palette (colour lookup table) is missing or invalid.") from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        # pydicom 3 already converts YBR_FULL(_422) to RGB when decoding (as_rgb=True).
        rgb = arr.astype(np.float32)
        scale = max(float(rgb.max()), 1.0)
        chroma = rgb.max(axis=2) - rgb.min(axis=2)
        colourfulness = float(chroma.mean() / scale)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        full = float(2 ** min(int(ds.get("BitsStored", 8) or 8), 16) - 1)
        pixels = np.clip(gray / full, 0.0, 1.0).astype(np.float32)
        value_range: tuple[float, float] | None = (0.0, full)
        voi_applied, units = "", ""
    elif arr.ndim == 2:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ImageLoadError(f"The DICOM photometric interpretation '{photometric}' is not supported.")
        try:
            arr = apply_modality_lut(arr, ds)
        except Exception as exc:
            raise ImageLoadError(
                "The DICOM rescale values (Rescale Slope/Intercept or Modality LUT) are invalid."
            ) from exc
        pixels, value_range, voi_applied = _apply_voi(arr, ds, apply_voi_lut)
        units = _dicom_units(ds)
    else:
        raise ImageLoadError(f"The DICOM pixel data has an unexpected shape {arr.shape}.")
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1 stores dense tissue dark; models expect it bright
        if value_range is not None:  # so p = 0 (black) is now the top of the window: the map reverses
            value_range = (value_range[1], value_range[0])
    pixels, downscaled = _downscale(pixels)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    pixel_spacing = None
    if spacing is not None:
        try:
            pixel_spacing = (float(spacing[0]), float(spacing[1]))
        except (TypeError, ValueError, IndexError):
            pixel_spacing = None
    identifiers: dict[str, str] = {}
    if include_identifiers:
        for tag in _IDENTIFIER_TAGS:
            value = ds.get(tag)
            if value not in (None, ""):
                identifiers[tag] = str(value)
    meta = ImageMeta(
        age_group=_dicom_age_group(ds.get("PatientAge")),
        format="DICOM",
        original_size=(cols, rows),
        bit_depth=_int_tag(ds, "BitsStored", bits_allocated) or bits_allocated,
        photometric=photometric,
        channels=samples,
        downscaled=downscaled,
        colourfulness=colourfulness,
        modality=_text(ds.get("Modality")),
        view_position=_text(ds.get("ViewPosition")),
        body_part=_text(ds.get("BodyPartExamined")),
        pixel_spacing=pixel_spacing,
        identifiers=identifiers,
        value_range=value_range,
        units=units,
        window_presets=_header_windows(ds),
        voi_function=_voi_function(ds),
        voi_applied=voi_applied,
    )
    return CXRImage(pixels=np.ascontiguousarray(pixels, dtype=np.float32), meta=meta, filename=name)


def _has_pixel_data(ds) -> bool:
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds and ds[tag].value not in (None, b""):
            return True
    return False


def _int_tag(ds, keyword: str, default):
    value = ds.get(keyword, None)
    if value in (None, ""):
        return default
    try:
        if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1:
            value = value[0]
        return int(float(value))
    except (TypeError, ValueError, IndexError):
        raise ImageLoadError(
            f"The DICOM file has an invalid {keyword} value ({str(value)[:40]!r})."
        ) from None


def _ensure_transfer_syntax(ds) -> None:
    """Files without a meta header: infer the encoding the dataset was actually read with."""
    import pydicom

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if little is False:
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    elif implicit is False:
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian


def _apply_voi(arr: np.ndarray, ds, apply_voi_lut) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """VOI LUT or window centre/width (pydicom), then scale by the VOI's output range to [0, 1].

    Without a VOI the stored range is min-max stretched. An unusable window (e.g. width 0) is
    ignored rather than refused: the full range is still a readable image.

    Returns (pixels, value_range, what was applied): value_range is the pair of modality values that
    became 0 and 1 (ImageMeta.value_range), None where the map is not linear (LUT, sigmoid).
    """
    arr = np.asarray(arr)
    seq = ds.get("VOILUTSequence")
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if seq:
        try:
            lut = seq[0]
            lut_data = np.asarray(apply_voi_lut(np.arange(int(lut.LUTDescriptor[0] or 65536)) + int(lut.LUTDescriptor[1]), ds))
            lo, hi = float(lut_data.min()), float(lut_data.max())
            src = arr if np.issubdtype(arr.dtype, np.integer) else np.rint(arr).astype(np.int64)
            out = np.asarray(apply_voi_lut(src, ds), dtype=np.float32)
            if hi > lo:
                return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), None, "VOI LUT"
        except ImageLoadError:
            raise
        except Exception:
            pass  # broken LUT: fall through to the window or the full range
    if has_window:
        try:
            out, value_range = _windowing(arr, ds)
            applied = "header window 1" if value_range is not None else f"header window 1 ({_voi_function(ds)})"
            return np.asarray(out, dtype=np.float32), value_range, applied
        except Exception:
            pass
    pixels, value_range = _normalise_with_range(np.asarray(arr, dtype=np.float32), 16)
    return pixels, value_range, "full range"


def _windowing(arr: np.ndarray, ds) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The header's first window (pydicom), and the modality values it maps to 0 and 1.

    The range follows PS3.3 C.11.2.1.2: LINEAR maps c - 0.5 -/+ (w - 1) / 2 to 0 / 1, LINEAR_EXACT
    c -/+ w / 2; SIGMOID has no linear inverse (None), nor has a zero-width LINEAR step.
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    # apply_windowing maps onto [y_min, y_max] of the stored bit depth; give it a minimal
    # unsigned 16-bit context so the output range is known exactly, then scale to [0, 1].
    ctx = Dataset()
    ctx.PhotometricInterpretation = "MONOCHROME2"
    ctx.BitsStored = 16
    ctx.PixelRepresentation = 0
    ctx.WindowCenter = ds.WindowCenter
    ctx.WindowWidth = ds.WindowWidth
    if "VOILUTFunction" in ds:
        ctx.VOILUTFunction = ds.VOILUTFunction
    out = apply_windowing(np.asarray(arr, dtype=np.float64), ctx, index=0)
    # the same centre / width / function that apply_windowing has just used
    func = str(getattr(ctx, "VOILUTFunction", "LINEAR")).upper()
    elem_c, elem_w = ctx["WindowCenter"], ctx["WindowWidth"]
    centre = float(elem_c.value[0] if elem_c.VM > 1 else elem_c.value)
    width = float(elem_w.value[0] if elem_w.VM > 1 else elem_w.value)
    value_range: tuple[float, float] | None = None
    if func == "LINEAR" and width > 1:
        value_range = (centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2)
    elif func == "LINEAR_EXACT":
        value_range = (centre - width / 2, centre + width / 2)
    return np.clip(out / 65535.0, 0.0, 1.0), value_range


def _as_list(value: Any) -> list[Any]:
    """A DICOM value of any multiplicity (None, one value, MultiValue) as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return list(value)
    return [value]


def _header_windows(ds) -> tuple[tuple[str, float, float], ...]:
    """Every (name, centre, width) in the header, in modality units; unreadable pairs are skipped.

    WindowCenter/WindowWidth are VM 1-n (alternative views of the same film), named by the
    optional WindowCenterWidthExplanation; a pair without a name is "Header <n>" (1-based).
    """
    try:
        centres = _as_list(ds.get("WindowCenter"))
        widths = _as_list(ds.get("WindowWidth"))
    except Exception:
        return ()
    try:
        names = [str(n).strip() for n in _as_list(ds.get("WindowCenterWidthExplanation"))]
    except Exception:
        names = []
    out: list[tuple[str, float, float]] = []
    for i, (c, w) in enumerate(zip(centres, widths)):
        try:
            centre, width = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0:
            continue
        name = names[i] if i < len(names) and names[i] else f"Header {i + 1}"
        out.append((name, centre, width))
    return tuple(out)


def _voi_function(ds) -> str:
    try:
        return str(ds.get("VOILUTFunction") or "LINEAR").strip().upper() or "LINEAR"
    except Exception:
        return "LINEAR"


def _dicom_units(ds) -> str:
    """Units of the modality values: RescaleType (or the Modality LUT's type); CT defaults to HU.

    "" means the stored pixel value (no rescale, or a rescale of unspecified type, "US").
    """
    try:
        seq = ds.get("ModalityLUTSequence")
        if seq:
            kind = _text(seq[0].get("ModalityLUTType"))
        else:
            kind = _text(ds.get("RescaleType"))
            if kind is None and _text(ds.get("Modality")) == "CT" and "RescaleIntercept" in ds:
                kind = "HU"  # CT Image module: rescaled CT values are Hounsfield units
    except Exception:
        return ""
    return "" if kind is None or kind.upper() == "US" else kind


def _text(value: object) -> str | None:
    if value in (None, ""):
        return None
    return str(value).strip() or None
