"""Reading chest X-rays from files or uploaded bytes into one normalised form.

Every reader ends in the same `CXRImage` (float32, 2-D, [0, 1]) so that the quality checks,
preprocessing and models never see format quirks. Every failure is an `ImageLoadError` whose
message a clinician can act on; no other exception type leaves `load_image`.
"""

from __future__ import annotations

import io as _io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

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
    pixel_spacing: tuple[float, float] | None = None
    identifiers: dict[str, str] = field(default_factory=dict)


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

    Raises `ImageLoadError` with a user-facing message for anything that is not a usable image.
    """
    try:
        data, name = _read_bytes(source, filename)
        if _looks_like_dicom(data, name):
            return _load_dicom(data, name, include_identifiers)
        return _load_pil(data, name)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError("The image is too large to process on this machine.") from None
    except Exception as exc:  # never let a decoder's own exception reach the user
        raise ImageLoadError(
            f"The file could not be read as an image ({type(exc).__name__}). "
            "It may be corrupt or truncated."
        ) from exc


# --- bytes ---------------------------------------------------------------------------------


def _read_bytes(source: Source, filename: str | None) -> tuple[bytes, str | None]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"No file was found at '{path.name}'.")
        size = path.stat().st_size
        _check_file_size(size)
        return path.read_bytes(), filename or path.name
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError("The upload did not contain binary image data.")
        data = bytes(data)
        filename = filename or getattr(source, "name", None)
    else:
        raise ImageLoadError("Unsupported input: give a file path or the file's bytes.")
    _check_file_size(len(data))
    return data, filename


def _check_file_size(n: int) -> None:
    if n == 0:
        raise ImageLoadError("The file is empty (0 bytes).")
    if n > settings.MAX_FILE_BYTES:
        raise ImageLoadError(
            f"The file is {n / 2**20:.0f} MB; the limit is {settings.MAX_FILE_BYTES / 2**20:.0f} MB."
        )


def _looks_like_dicom(data: bytes, name: str | None) -> bool:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in {".dcm", ".dicom"}:
        return True
    # Preamble-less DICOM: a dataset that starts with a (0008,xxxx) or (0002,xxxx) group tag.
    return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[2:4] != b"\x00\x00"


def _check_dimensions(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError("The image has no pixels.")
    if max(width, height) > settings.MAX_IMAGE_SIDE or width * height > settings.MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"The image is {width} x {height} pixels; the limit is "
            f"{settings.MAX_IMAGE_SIDE} pixels per side and {settings.MAX_IMAGE_PIXELS // 1_000_000} megapixels."
        )
    if min(width, height) < settings.MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"The image is only {width} x {height} pixels; at least {settings.MIN_IMAGE_SIDE} pixels "
            "per side are needed to read a chest X-ray."
        )


# --- PNG / JPEG / BMP / TIFF -----------------------------------------------------------------


def _load_pil(data: bytes, name: str | None) -> CXRImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(_io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageLoadError(
                "This file is not an image we can read. Upload a PNG, JPEG, BMP, TIFF or DICOM file."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageLoadError(
                "The image is too large (it looks like a decompression bomb) and was refused."
            ) from None
        fmt = (im.format or "").upper()
        if fmt not in _PIL_FORMATS:
            raise ImageLoadError(
                f"{fmt or 'This'} files are not supported. Upload a PNG, JPEG, BMP, TIFF or DICOM file."
            )
        width, height = im.size
        _check_dimensions(width, height)
        if getattr(im, "n_frames", 1) > 1 and fmt != "MPO":
            raise ImageLoadError(
                f"The {fmt} file holds {im.n_frames} images; upload a single radiograph."
            )
        if fmt in {"JPEG", "MPO"}:
            # Let libjpeg decode at a reduced scale: cheap downscaling of huge photos/scans.
            im.draft(im.mode if im.mode != "CMYK" else "RGB", (settings.WORKING_SIDE, settings.WORKING_SIDE))
        try:
            im.load()
        except (OSError, SyntaxError) as exc:
            raise ImageLoadError(
                "The image file is damaged or truncated and could not be decoded completely."
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageLoadError("The image is too large and was refused.") from None
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    bit_depth = 16 if mode.startswith("I;16") or mode == "I" else (32 if mode == "F" else 8)
    had_alpha = mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (
        mode == "P" and "transparency" in im.info
    )
    arr, channels, colourfulness = _pil_to_gray(im)
    pixels = _normalise(arr, bit_depth)
    pixels, downscaled = _downscale(pixels)
    meta = ImageMeta(
        format="JPEG" if fmt == "MPO" else fmt,
        original_size=(width, height),
        bit_depth=bit_depth,
        photometric=_photometric_from_mode(mode),
        channels=channels,
        downscaled=downscaled,
        had_alpha=had_alpha,
        colourfulness=colourfulness,
    )
    return CXRImage(pixels=pixels, meta=meta, filename=name)


def _photometric_from_mode(mode: str) -> str:
    if mode in {"L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "1"}:
        return "MONOCHROME2"
    if mode == "P":
        return "PALETTE"
    if mode == "CMYK":
        return "CMYK"
    return "RGB"


def _pil_to_gray(im: Image.Image) -> tuple[np.ndarray, int, float]:
    """Return (2-D array, source channel count, colourfulness); alpha is flattened onto black."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in {"LA", "La", "PA"}:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in {"CMYK", "YCbCr", "LAB", "HSV", "RGBa"}:
        im = im.convert("RGB")
        mode = "RGB"
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode in {"RGB", "RGBA"}:
        rgba = np.asarray(im, dtype=np.float32) / 255.0
        rgb = rgba[..., :3]
        if mode == "RGBA":
            rgb = rgb * rgba[..., 3:4]  # transparent areas become black background
        chroma = rgb.max(axis=2) - rgb.min(axis=2)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return gray * 255.0, 3, float(chroma.mean())
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.uint16).astype(np.float32), 1, 0.0
    return np.asarray(im, dtype=np.float32), 1, 0.0


def _normalise(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map to [0, 1]. 8-bit keeps its absolute scale; deeper data is min-max stretched because
    12-bit detectors store in 16-bit containers and an absolute /65535 would look black."""
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    if bit_depth == 8:
        return np.clip(arr / 255.0, 0.0, 1.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _downscale(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    h, w = pixels.shape
    long_side = max(h, w)
    if long_side <= settings.WORKING_SIDE:
        return np.ascontiguousarray(pixels, dtype=np.float32), False
    import cv2  # local: only needed for large inputs

    scale = settings.WORKING_SIDE / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return np.clip(out, 0.0, 1.0), True


# --- DICOM -------------------------------------------------------------------------------------


def _load_dicom(data: bytes, name: str | None, include_identifiers: bool) -> CXRImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=True)
    except InvalidDicomError:
        raise ImageLoadError("This file is not a valid DICOM file.") from None
    except Exception as exc:
        raise ImageLoadError("The DICOM file is damaged and could not be read.") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if len(ds) == 0:
            raise ImageLoadError("This file is not an image or a DICOM file we can read.")
        raise ImageLoadError("The DICOM file has no pixel data (it may be a report or a structured document).")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageLoadError(
            f"The DICOM file holds {frames} frames; upload a single-frame radiograph."
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError("The DICOM file does not state the image size (Rows/Columns missing).") from None
    _check_dimensions(cols, rows)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # Files without a preamble/meta header: the usual encoding is implicit VR little endian.
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name_ = getattr(syntax, "name", str(syntax))
        raise ImageLoadError(
            f"The DICOM pixel data could not be decoded (transfer syntax: {name_}). "
            "The file may be damaged or use a compression this installation cannot read."
        ) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    colourfulness = 0.0
    if arr.ndim == 3 and samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        rgb = arr.astype(np.float32)
        chroma = rgb.max(axis=2) - rgb.min(axis=2)
        colourfulness = float(chroma.mean() / max(float(rgb.max()), 1.0))
        arr = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif arr.ndim != 2:
        raise ImageLoadError(f"The DICOM pixel data has an unexpected shape {arr.shape}.")
    else:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds, index=0)
    pixels = _normalise(np.asarray(arr, dtype=np.float32), 16)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1 stores dense tissue dark; models expect it bright
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
        format="DICOM",
        original_size=(cols, rows),
        bit_depth=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        photometric=photometric,
        channels=samples,
        downscaled=downscaled,
        colourfulness=colourfulness,
        modality=_text(ds.get("Modality")),
        view_position=_text(ds.get("ViewPosition")),
        pixel_spacing=pixel_spacing,
        identifiers=identifiers,
    )
    return CXRImage(pixels=pixels, meta=meta, filename=name)


def _text(value: object) -> str | None:
    if value in (None, ""):
        return None
    return str(value)
