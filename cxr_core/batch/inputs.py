"""What a batch run scores: the list of inputs, and how a worker reads one input's bytes.

The driver only *lists* inputs (paths or URIs); it never opens them. Workers read the bytes
(`read_source`), so on a cluster the driver does not become the I/O bottleneck and file
contents never travel through it.

Kinds of INPUT (`resolve_inputs`):

* a folder: image/DICOM files in the tree (same suffix rule as `python -m cxr_core.predict`);
* a manifest CSV with a `path` column; relative paths are resolved against the CSV's folder
  (so `../shared/data/cxr3/manifest.csv` works from anywhere);
* a single image file.

* a DICOMweb query, `dicomweb+http(s)://ROOT?PatientID=...&StudyDate=FROM-TO` (cxr_core/pacs/batch.py).

Other sources plug in the same way as the DICOMweb one: a resolver that turns the INPUT string
into `InputItem`s whose `source` is a URI with its own scheme, and a reader for that scheme, both
as "module:function" strings so worker processes import them lazily (this module imports no
optional package itself):

    INPUT_RESOLVERS: ("dicomweb", "cxr_core.pacs.batch:resolve")   # (INPUT) -> list[InputItem] | None
    READERS: {"dicomweb+http": "cxr_core.pacs.batch:read"}         # (uri) -> bytes
"""

from __future__ import annotations

import csv
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_core import settings
from cxr_core.io import ImageLoadError
from cxr_core.classify.predict_files import iter_inputs

MANIFEST_SUFFIXES = {".csv"}


class InputError(ValueError):
    """The INPUT argument cannot be turned into a list of inputs (a usage error, exit code 2)."""


@dataclass(frozen=True)
class InputItem:
    """One input to score. `file` is the row's key in the results (an absolute path, or the URI
    for non-file sources); `source` is what the worker reads (same as `file` for local files)."""

    file: str
    source: str


def _resolve_folder(spec: str) -> list[InputItem] | None:
    path = Path(spec)
    if not path.is_dir():
        return None
    files = [p.resolve() for p in iter_inputs([path])]
    return [InputItem(str(p), str(p)) for p in files]


def _resolve_manifest(spec: str) -> list[InputItem] | None:
    path = Path(spec)
    if not (path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES):
        return None
    base = path.resolve().parent
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InputError(f"{path.name} has no 'path' column (columns: {', '.join(reader.fieldnames or [])}).")
        items: list[InputItem] = []
        seen: set[str] = set()
        for row in reader:
            value = (row.get("path") or "").strip()
            if not value:
                continue
            p = Path(value)
            p = (p if p.is_absolute() else base / p).resolve()
            if str(p) not in seen:  # a manifest listing a file twice still gives one row
                seen.add(str(p))
                items.append(InputItem(str(p), str(p)))
    return items


def _resolve_file(spec: str) -> list[InputItem] | None:
    path = Path(spec)
    if not path.is_file():
        return None
    p = path.resolve()
    return [InputItem(str(p), str(p))]


# Tried in order; the first resolver that does not return None wins. Entries are callables or
# "module:function" strings (imported on use).
INPUT_RESOLVERS: list[tuple[str, Callable[[str], list[InputItem] | None] | str]] = [
    ("dicomweb", "cxr_core.pacs.batch:resolve"),  # dicomweb+http(s)://ROOT?PatientID=...: a PACS query
    ("folder", _resolve_folder),
    ("manifest", _resolve_manifest),
    ("file", _resolve_file),
]


def _load(ref: Callable | str) -> Callable:
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_inputs(spec: str) -> tuple[str, list[InputItem]]:
    """(kind, items) for the INPUT argument; raises `InputError` when nothing matches."""
    for kind, resolver in INPUT_RESOLVERS:
        items = _load(resolver)(spec)
        if items is not None:
            return kind, items
    if "://" in spec:
        raise InputError(f"No input kind handles '{spec.split('://', 1)[0]}://' URLs; a DICOMweb (PACS) query is "
                         "dicomweb+http://HOST/dicom-web?PatientID=... (see cxr_core/pacs/batch.py).")
    raise InputError(f"{spec} is neither a folder, a manifest CSV with a 'path' column, nor an image file.")


# --- reading, in the worker ------------------------------------------------------------------


def read_file(path: str) -> bytes:
    """A local (or shared-filesystem) file's bytes; `ImageLoadError` (the app's wording) when it
    is missing, a folder, unreadable or over the size limit, so the row carries a clear message."""
    p = Path(path)
    try:
        size = p.stat().st_size if p.is_file() else -1
    except OSError:
        size = -1
    if size < 0 or size > settings.MAX_FILE_BYTES:
        from cxr_core.pipeline import decode

        decode(p)  # raises ImageLoadError with the user-facing reason (missing, folder, too large)
        raise ImageLoadError(f"The file '{p.name}' could not be read.")  # pragma: no cover - decode raised
    try:
        with open(p, "rb") as fh:
            return fh.read(settings.MAX_FILE_BYTES + 1)
    except PermissionError:
        raise ImageLoadError(f"The file '{p.name}' could not be opened (permission denied).") from None
    except OSError as exc:
        raise ImageLoadError(f"The file '{p.name}' could not be read from disk ({exc.strerror or exc}).") from None


# scheme -> reader; "file" covers plain paths. Strings are imported lazily in the worker.
READERS: dict[str, Callable[[str], bytes] | str] = {
    "file": read_file,
    "dicomweb+http": "cxr_core.pacs.batch:read",  # WADO-RS, credentials from CXR_PACS_USER / _PASSWORD
    "dicomweb+https": "cxr_core.pacs.batch:read",
}


def read_source(source: str) -> bytes:
    """The bytes of one input, via the reader for its scheme (plain paths: "file")."""
    scheme = source.split("://", 1)[0] if "://" in source and not os.path.exists(source) else "file"
    if scheme == "file" and source.startswith("file://"):
        source = source[len("file://"):]
    reader = READERS.get(scheme)
    if reader is None:
        raise ImageLoadError(f"No reader for '{scheme}://' inputs is installed.")
    return _load(reader)(source)
