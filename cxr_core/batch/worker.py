"""The per-input work of a batch run: read bytes, hash, `pipeline.analyse`, one result row.

`Scorer` is the class-based UDF that Ray Data runs on an actor pool: each actor loads the
classifier once in `__init__` (weights read through `cxr_core.models.load_classifier`, the same
loader the app uses) and then scores many batches. Nothing here imports Ray, so the same code
runs in a plain loop (the benchmark) and in tests without a cluster.

A row never raises: an unusable file gives its `ImageLoadError` message (deterministic for those
bytes, so a rerun reuses it), anything unexpected gives a generic message with only the exception
type (no traceback, no paths or identifiers) and is retried by the next run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from cxr_core import settings
from cxr_core.batch import inputs

# Rows whose error starts with this are retried on the next run (see outputs.reusable).
INTERNAL_ERROR_PREFIX = "Internal error"


PROB_COLUMNS: tuple[str, ...] = settings.prob_columns()  # the shipped cxr3 classifiers'

# The columns after the probabilities, the same for every classifier.
_TAIL_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("predicted", pa.string()),
    ("confidence", pa.float64()),
    ("abstained", pa.bool_()),
    ("reasons", pa.string()),
    ("quality", pa.string()),
    ("orientation", pa.string()),  # upright / rotated 90 / inverted / mirrored (cxr_core.gate.orientation)
    ("age_group", pa.string()),
    ("age_group_option", pa.string()),
    ("boxes", pa.string()),
    ("model", pa.string()),
    ("model_version", pa.string()),
    ("error", pa.string()),
]


def result_schema(classes: Sequence[str] = settings.CLASSES) -> pa.Schema:
    """Result columns, in order (the files a hospital team loads), for a classifier with `classes`
    (its `p_<class>` columns: a model retrained on other classes gets its own).

    `boxes` is null unless --boxes; `age_group` is the band the abstention rule used,
    `age_group_option` the --age-group given ("" = from the DICOM header), part of the resume key
    because it changes the result."""
    return pa.schema([("file", pa.string()), ("sha256", pa.string())]
                     + [(c, pa.float64()) for c in settings.prob_columns(classes)] + _TAIL_COLUMNS)


RESULT_SCHEMA = result_schema()
IDENTIFIERS_FIELD = pa.field("identifiers", pa.string())  # JSON; only with --include-identifiers


def worker_schema(classes: Sequence[str] = settings.CLASSES) -> pa.Schema:
    """What a worker returns: the result columns plus transport-only fields the driver strips."""
    return (result_schema(classes).append(IDENTIFIERS_FIELD)
            .append(pa.field("_skipped", pa.bool_()))
            .append(pa.field("_overlay", pa.binary()))
            .append(pa.field("_pid", pa.int64()))  # which actor, and its peak RSS so far (benchmark)
            .append(pa.field("_rss_mb", pa.float64())))


WORKER_SCHEMA = worker_schema()


def model_version(name: str, backend: str = "torch") -> str:
    """`<name>@<12 hex>`: sha256 over the weights file and the card's decision settings.

    On an ONNX backend `+<backend>@<12 hex of the .onnx file>` follows, so rows scored by another
    backend are not reused by a resumed run (their probabilities may differ in the last digits).

    The card (`report.model_version`) has no weights checksum, and two trainings can share a date
    and code version, so the bytes of `weights/<name>.pt` (which hold the calibration temperature)
    plus the card's abstention threshold identify what produced a result. Raises
    `ModelUnavailableError` (via the loader's rule) when the weights are missing.
    """
    from cxr_core.models import read_card, weights_path

    path = weights_path(name)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    cal = ((read_card(name) or {}).get("calibration") or {})
    h.update(json.dumps({"abstain_threshold": cal.get("abstain_threshold")}, sort_keys=True).encode())
    version = f"{name}@{h.hexdigest()[:12]}"
    if backend != "torch":
        from cxr_core.export.backend import onnx_file
        from cxr_core.export.to_onnx import sha256_file

        version += f"+{backend}@{sha256_file(onnx_file(name, backend))[:12]}"
    return version


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports ru_maxrss in kB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def overlay_name(sha256: str, model: str) -> str:
    """Stable, identifier-free overlay file name: same bytes and model give the same name."""
    return f"{sha256[:16]}-{model}.png"


def _box_dict(b: Any) -> dict[str, Any]:
    return {
        "label": b.label,
        "class_id": int(getattr(b, "class_id", -1)),
        "confidence": round(float(b.confidence), 4),
        "validated": bool(getattr(b, "validated", False)),
        "box_xyxy": [round(float(v), 1) for v in (b.x0, b.y0, b.x1, b.y1)],
    }


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG")
    return buf.getvalue()


def _generic_error(stage: str, exc: BaseException) -> str:
    return f"{INTERNAL_ERROR_PREFIX} ({type(exc).__name__}) during {stage}; it will be retried on the next run."


def _attempt(row: dict[str, Any], stage: str, compute: Any) -> Any:
    """compute(), or None with the row's `error` set: the reader's own message for unusable input,
    a generic one (exception type only, no detail that could hold content) for anything else."""
    from cxr_core.io import ImageLoadError

    try:
        return compute()
    except ImageLoadError as exc:
        row["error"] = str(exc)
    except Exception as exc:
        row["error"] = _generic_error(stage, exc)
    return None


def empty_row(file: str, sha256: str, model: str, version: str, age_group_option: str,
              schema: pa.Schema = WORKER_SCHEMA) -> dict[str, Any]:
    row: dict[str, Any] = {f.name: None for f in schema}
    row.update(file=file, sha256=sha256, model=model, model_version=version, age_group_option=age_group_option,
               _skipped=False)
    return row


class Scorer:
    """Ray Data UDF (one instance per actor): scores a batch of inputs, one row each.

    `threads`: torch (and OpenCV) threads for this actor; the driver sets it so that
    actors x threads = the CPUs Ray has. `done`: sha256s whose stored row can be reused, so the
    actor skips the model for them (it has to read the bytes anyway to know the sha256).
    `expected_version`: the driver's model version; an actor whose weights differ refuses to start,
    so a cluster with stale weights on one node cannot mix two models in one results file.
    """

    def __init__(
        self,
        model: str = settings.DEFAULT_CLASSIFIER,
        *,
        backend: str = "torch",
        threads: int = 1,
        age_group: str | None = None,
        cam: bool = False,
        boxes: bool = False,
        include_identifiers: bool = False,
        done: Iterable[str] = (),
        expected_version: str | None = None,
    ) -> None:
        import torch

        from cxr_core.models import load_classifier

        os.environ.setdefault("YOLO_OFFLINE", "1")  # the detector must never try to download
        torch.set_num_threads(max(1, int(threads)))
        try:
            import cv2

            cv2.setNumThreads(max(1, int(threads)))
        except Exception:  # OpenCV is optional for the classifier path
            pass
        random.seed(settings.SEED)
        np.random.seed(settings.SEED)
        torch.manual_seed(settings.SEED)
        self.model = model
        if backend == "torch":
            self.classifier = load_classifier(model)
        else:  # ONNX Runtime with this actor's thread count; overlays still use the PyTorch twin
            from cxr_core.export.backend import load

            self.classifier = load(model, backend, threads=max(1, int(threads)))
        self.schema = worker_schema(self.classifier.classes)
        self.version = model_version(model, backend)
        if expected_version and self.version != expected_version:
            raise RuntimeError(f"This worker's {model} weights are {self.version}, the driver's are "
                               f"{expected_version}; give every node the same weights.")
        self.age_group = age_group
        self.cam, self.boxes = cam, boxes
        self.include_identifiers = include_identifiers
        self.done = frozenset(done)

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        files = [str(f) for f in batch["file"]]
        sources = [str(s) for s in batch.get("source", batch["file"])]
        rows = [self.score(f, s) for f, s in zip(files, sources)]
        pid, rss = os.getpid(), peak_rss_mb()
        for r in rows:
            r["_pid"], r["_rss_mb"] = pid, rss
        return pa.Table.from_pylist(rows, schema=self.schema)

    def score(self, file: str, source: str) -> dict[str, Any]:
        """One row for one input; never raises."""
        from cxr_core import pipeline

        row = empty_row(file, "", self.model, self.version, self.age_group or "", self.schema)
        data = _attempt(row, "reading", lambda: inputs.read_source(source))
        if data is None:
            return row
        row["sha256"] = hashlib.sha256(data).hexdigest()
        if row["sha256"] in self.done:
            row["_skipped"] = True
            return row
        analysis = _attempt(row, "analysis", lambda: pipeline.analyse(
            data, classifier=self.classifier, age_group=self.age_group, filename=os.path.basename(file),
            include_identifiers=self.include_identifiers))
        if analysis is None:
            return row
        data = None  # the file's bytes are not needed for the layers below
        pred = analysis.prediction
        flat = analysis.row()
        # exact probabilities (Analysis.row() rounds them for display)
        row.update({f"p_{c}": float(p) for c, p in pred.probabilities.items()})
        row.update(predicted=pred.predicted, confidence=float(pred.confidence), abstained=bool(pred.abstained),
                   reasons=flat["reasons"], quality=flat["quality"], orientation=flat["orientation"] or None,
                   age_group=flat["age_group"] or None)
        if self.include_identifiers:  # "{}" (not null) marks a row made with identifiers requested
            row["identifiers"] = json.dumps(dict(analysis.image.meta.identifiers or {}), sort_keys=True)
        found = None
        try:
            if self.boxes:
                found = analysis.boxes()
                row["boxes"] = json.dumps([_box_dict(b) for b in found])
            if self.cam or self.boxes:
                row["_overlay"] = self._overlay(analysis, found)
        except Exception as exc:  # the prediction stands; the missing layer is retried next run
            row["error"] = _generic_error("heatmap/boxes", exc)
        return row

    def _overlay(self, analysis: Any, found: list | None) -> bytes:
        from cxr_core import dashboard
        from cxr_core.classify import explain

        if self.cam:
            rgb = explain.overlay(analysis.image, analysis.heatmap(), alpha=0.4, fade=True)
        else:
            rgb = dashboard.to_rgb(analysis.image.pixels)
        if found:
            from cxr_core import detection

            rgb = detection.draw_boxes(rgb, found, scale=dashboard.box_scale(analysis.image))
        return _png(rgb)
