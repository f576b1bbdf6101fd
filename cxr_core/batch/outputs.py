"""Everything a batch run writes, all under its output folder DIR.

    DIR/results.parquet   one row per input (worker.RESULT_SCHEMA), the file to load
    DIR/results.csv       the same rows as CSV
    DIR/summary.json      counts of this run (per class, abstained, errors, new, skipped, speed, Ray)
    DIR/overlays/         <sha256[:16]>-<model>.png when --cam or --boxes
    DIR/parts/            checkpoints written while a run is going; merged and removed at the end
    DIR/ray_logs/         Ray's logs of the last local run (see run.RaySession)

Why checkpoints: an archive run takes hours; the rows already scored must survive a kill, so the
driver writes them in parts as they arrive and a rerun reads results.parquet plus any parts.
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cxr_core import settings
from cxr_core.batch.worker import (
    IDENTIFIERS_FIELD,
    INTERNAL_ERROR_PREFIX,
    RESULT_SCHEMA,
    overlay_name,
    result_schema,
)

RESULTS = "results.parquet"
RESULTS_CSV = "results.csv"
SUMMARY = "summary.json"
OVERLAYS = "overlays"
PARTS = "parts"
RAY_LOGS = "ray_logs"

FULL_SCHEMA = RESULT_SCHEMA.append(IDENTIFIERS_FIELD)


def _conform(table: pa.Table, schema: pa.Schema = FULL_SCHEMA) -> pa.Table:
    """A table with exactly `schema`'s columns (missing ones null), in order."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class ResultStore:
    """The output folder: existing results, checkpoints, the final merge and the summary."""

    def __init__(self, out_dir: Path, classes: Sequence[str] = settings.CLASSES):
        """`classes`: the run's classifier's, so its `p_<class>` columns are the ones kept."""
        self.dir = Path(out_dir)
        self.classes = tuple(classes)
        self.schema = result_schema(self.classes).append(IDENTIFIERS_FIELD)
        self._part_no = 0
        self._run_tag = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- reading ------------------------------------------------------------------------------

    def existing(self) -> list[dict[str, Any]]:
        """Stored rows (results.parquet, then checkpoints of interrupted runs), one per file:
        a later row for the same file replaces an earlier one."""
        tables = []
        main = self.dir / RESULTS
        if main.is_file():
            tables.append(pq.read_table(main))
        parts = self.dir / PARTS
        if parts.is_dir():
            for p in sorted(parts.glob("*.parquet")):
                try:
                    tables.append(pq.read_table(p))
                except Exception:  # a checkpoint cut off by a kill: its rows are simply redone
                    continue
        by_file: dict[str, dict[str, Any]] = {}
        for t in tables:
            for row in _conform(t, self.schema).to_pylist():
                by_file[row["file"]] = row
        return list(by_file.values())

    def overlay_path(self, sha256: str, model: str) -> Path:
        return self.dir / OVERLAYS / overlay_name(sha256, model)

    def reusable(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        model_version: str,
        age_group_option: str,
        boxes: bool,
        overlays: bool,
        identifiers: bool,
    ) -> dict[str, dict[str, Any]]:
        """sha256 -> a stored row this run may reuse instead of scoring the input again.

        The resume key is (sha256, model_version, age_group_option); a row also has to carry what
        this run asks for (boxes, an overlay on disk, identifiers) and must not be an internal
        error (those are transient and retried). Unreadable-file rows are reused: the same bytes
        give the same message.
        """
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            sha = r.get("sha256") or ""
            if not sha or r.get("model_version") != model_version:
                continue
            if (r.get("age_group_option") or "") != age_group_option:
                continue
            err = r.get("error")
            if err and err.startswith(INTERNAL_ERROR_PREFIX):
                continue
            if not err:
                if boxes and r.get("boxes") is None:
                    continue
                if identifiers and r.get("identifiers") is None:
                    continue
                if overlays and not self.overlay_path(sha, r["model"]).is_file():
                    continue
            out.setdefault(sha, dict(r))
        return out

    # --- writing ------------------------------------------------------------------------------

    def write_overlay(self, sha256: str, model: str, png: bytes) -> None:
        path = self.overlay_path(sha256, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(path, lambda tmp: tmp.write_bytes(png))

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        """Checkpoint rows scored so far (kept until the final merge)."""
        if not rows:
            return
        parts = self.dir / PARTS
        parts.mkdir(parents=True, exist_ok=True)
        self._part_no += 1
        path = parts / f"part-{self._run_tag}-{self._part_no:05d}.parquet"
        table = _conform(pa.Table.from_pylist(rows, schema=self.schema), self.schema)
        _atomic(path, lambda tmp: pq.write_table(table, tmp))

    def finalise(self, rows: list[dict[str, Any]], *, include_identifiers: bool) -> pa.Table:
        """Write results.parquet and results.csv (sorted by file) and drop the checkpoints.

        Without --include-identifiers the `identifiers` column is left out entirely, even if an
        earlier run in this folder asked for it.
        """
        table = _conform(pa.Table.from_pylist(rows, schema=self.schema), self.schema)
        table = table.sort_by("file")
        if not include_identifiers:
            table = table.drop_columns(["identifiers"])
        _atomic(self.dir / RESULTS, lambda tmp: pq.write_table(table, tmp))
        _atomic(self.dir / RESULTS_CSV, lambda tmp: table.to_pandas().to_csv(tmp, index=False))
        parts = self.dir / PARTS
        if parts.is_dir():
            for p in parts.glob("*.parquet"):
                p.unlink()
            try:
                parts.rmdir()
            except OSError:
                pass
        return table

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
        _atomic(self.dir / SUMMARY, lambda tmp: tmp.write_text(text))


def count_rows(rows: Iterable[Mapping[str, Any]], classes: Sequence[str] = settings.CLASSES) -> dict[str, Any]:
    """Counts a reader wants first: per predicted class (of the run's classifier), abstained, errors."""
    rows = list(rows)
    ok = [r for r in rows if not r.get("error") and r.get("predicted")]
    errors = [r for r in rows if r.get("error")]
    abstained = sum(1 for r in ok if r.get("abstained"))
    by_message: dict[str, int] = {}
    for r in errors:
        by_message[r["error"]] = by_message.get(r["error"], 0) + 1
    return {
        "n_rows": len(rows),
        "n_scored": len(ok),
        "predicted": {c: sum(1 for r in ok if r.get("predicted") == c) for c in classes},
        "predicted_not_abstained": {c: sum(1 for r in ok if r.get("predicted") == c and not r.get("abstained"))
                                    for c in classes},
        "abstained": abstained,
        "abstention_rate": round(abstained / len(ok), 4) if ok else None,
        "errors": len(errors),
        "internal_errors": sum(1 for r in errors if r["error"].startswith(INTERNAL_ERROR_PREFIX)),
        "errors_by_message": dict(sorted(by_message.items(), key=lambda kv: -kv[1])[:20]),
    }
