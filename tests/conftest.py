"""Shared test fixtures.

* `requires_cxr3`: skip marker for tests that read the real cxr3 data set in ../shared.
  Import it in any test module with ``from conftest import requires_cxr3``.
* `chest_phantom(...)`: a deterministic synthetic chest-like radiograph (float32, [0, 1]).
* `images` fixture: an `ImageFactory` that writes arrays as PNG/JPEG/BMP/TIFF/DICOM files
  inside the test's tmp_path (all test inputs are built in the tests; nothing is downloaded).
* `cxr3_rows(split, n)`: a deterministic sample of manifest rows from cxr3 (empty when absent).
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# Make `cxr_core` importable when pytest is run as `pytest` (not `python -m pytest`) from anywhere.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from cxr_core import settings  # noqa: E402

CXR3_AVAILABLE: bool = settings.CXR3_DIR.exists() and settings.CXR3_MANIFEST.exists()

requires_cxr3 = pytest.mark.skipif(
    not CXR3_AVAILABLE,
    reason=f"real cxr3 data not found at {settings.CXR3_DIR} (set CXR_SHARED_DIR to the shared folder)",
)


def cxr3_rows(split: str | None = None, n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """Manifest rows (optionally of one split), a seeded random sample of n when n is given."""
    if not CXR3_AVAILABLE:
        return []
    with open(settings.CXR3_MANIFEST, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if split is None or r["split"] == split]
    rows.sort(key=lambda r: r["path"])
    if n is not None and n < len(rows):
        idx = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
        rows = [rows[i] for i in sorted(idx)]
    return rows


def chest_phantom(size: int | tuple[int, int] = 256, seed: int = 0) -> np.ndarray:
    """A synthetic PA chest radiograph: body, dark lungs, bright mediastinum/spine, ribs,
    diaphragm and fine texture. Deterministic for a given (size, seed). float32 (H, W) in [0, 1]."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (x + 0.5) / w * 2 - 1, (y + 0.5) / h * 2 - 1  # [-1, 1]
    img = np.full((h, w), 0.08, np.float32)
    body = (u / 0.92) ** 2 + ((v - 0.1) / 1.15) ** 2 < 1
    img[body] = 0.62
    # lungs: two ellipses with a soft edge
    for cx in (-0.42, 0.42):
        d = ((u - cx) / 0.34) ** 2 + ((v + 0.05) / 0.62) ** 2
        lung = np.clip((1.15 - d) / 0.3, 0, 1)
        img -= 0.38 * lung
        # ribs: oblique bright bands inside the lungs
        ribs = 0.5 + 0.5 * np.sin((v * 9.0 + 1.6 * np.abs(u - cx)) * np.pi)
        img += 0.10 * lung * ribs**3
    # mediastinum / spine / heart
    img += 0.22 * np.exp(-((u / 0.13) ** 2)) * (v > -0.8)
    img += 0.18 * np.exp(-(((u + 0.12) / 0.22) ** 2 + ((v - 0.32) / 0.22) ** 2))
    # diaphragm domes
    img += 0.25 * (v > 0.55 + 0.08 * np.cos(u * 3.0)) * body
    # clavicles
    img += 0.12 * np.exp(-(((v + 0.62 - 0.18 * np.abs(u)) / 0.03) ** 2)) * (np.abs(u) < 0.7)
    # film grain / lung texture (smoothed noise at two scales)
    import cv2

    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), 0.8)
    coarse = cv2.GaussianBlur(noise, (0, 0), 3.0)
    img += 0.035 * fine + 0.08 * coarse
    img = cv2.GaussianBlur(img, (0, 0), 0.6)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(arr, np.float32) * 255), 0, 255).astype(np.uint8)


def to_uint16(arr: np.ndarray, bits: int = 16) -> np.ndarray:
    return np.clip(np.rint(np.asarray(arr, np.float32) * (2**bits - 1)), 0, 2**bits - 1).astype(np.uint16)


def encode(image: Image.Image | np.ndarray, fmt: str, **save_kw: Any) -> bytes:
    """PIL-encode an array or image to bytes (fmt: PNG, JPEG, BMP, TIFF, GIF, ...)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, fmt, **save_kw)
    return buf.getvalue()


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    transfer_syntax: str | None = None,
    compress: str | None = None,
    raw_tags: dict[str, bytes] | None = None,
    **tags: Any,
) -> bytes:
    """Build a DICOM file in memory. `pixels`: uint8/uint16 (H, W), (H, W, 3) or (F, H, W).

    Extra keyword tags are set on the dataset (e.g. WindowCenter=..., Modality="DX");
    a tag given as None is deleted. `compress` is a transfer syntax UID passed to ds.compress().
    `raw_tags` stores undecoded bytes as a tag's value (for invalid values pydicom would refuse).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    arr = np.ascontiguousarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    import hashlib

    uid = generate_uid(entropy_srcs=[hashlib.sha1(arr.tobytes()).hexdigest(), str(arr.shape), str(sorted(tags))])
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ID12345"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.PixelSpacing = [0.139, 0.139]
    colour = arr.ndim == 3 and arr.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2")
    if arr.ndim == 3 and not colour:
        ds.NumberOfFrames = arr.shape[0]
        ds.Rows, ds.Columns = arr.shape[1:3]
    else:
        ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = 8 if arr.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    for key, raw in (raw_tags or {}).items():
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.dataelem import RawDataElement

        tag = tag_for_keyword(key)
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    if compress:
        ds.compress(compress)
    buf = io.BytesIO()
    if preamble:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid raw_tags are intended
            ds.save_as(buf, enforce_file_format=True)
    else:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        ds.file_meta = FileMetaDataset()
        write_dataset(fp, ds)
        return fp.getvalue()
    return buf.getvalue()


class ImageFactory:
    """Writes test inputs into a temporary folder; every method returns the file's Path."""

    def __init__(self, root: Path):
        self.root = root

    chest = staticmethod(chest_phantom)

    def write(self, data: bytes, name: str) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def save(self, image: Image.Image | np.ndarray, name: str, fmt: str | None = None, **kw: Any) -> Path:
        fmt = fmt or {"jpg": "JPEG", "tif": "TIFF"}.get(name.rsplit(".", 1)[-1].lower(), name.rsplit(".", 1)[-1].upper())
        return self.write(encode(image, fmt, **kw), name)

    def chest_png(self, name: str = "chest.png", size: int | tuple[int, int] = 256, seed: int = 0) -> Path:
        return self.save(to_uint8(chest_phantom(size, seed)), name)

    def chest_jpeg(self, name: str = "chest.jpg", size: int | tuple[int, int] = 256, seed: int = 0, **kw: Any) -> Path:
        kw.setdefault("quality", 95)
        return self.save(to_uint8(chest_phantom(size, seed)), name, "JPEG", **kw)

    def dicom(self, pixels: np.ndarray, name: str = "chest.dcm", **kw: Any) -> Path:
        return self.write(make_dicom(pixels, **kw), name)


@pytest.fixture
def images(tmp_path: Path) -> ImageFactory:
    return ImageFactory(tmp_path)


@pytest.fixture(scope="session")
def phantom() -> np.ndarray:
    """The default 256 px chest phantom (read-only)."""
    arr = chest_phantom(256, 0)
    arr.setflags(write=False)
    return arr


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: inputs are tiny and the 2-core machine is shared, where
    oversubscribed OpenMP threads run tens of times slower. Use with pytest.mark.usefixtures."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
