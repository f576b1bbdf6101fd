"""Command line of batch scoring: `python -m cxr_core.batch INPUT --out DIR [options]`.

Exit codes (also in docs/batch.md):
  0  every input has a row in DIR/results.parquet; unreadable files are rows with their `error`
     message (an archive always has a few, they are not a failure of the run)
  1  the run finished but some rows carry an internal (transient) error, or the Ray job stopped
     part-way; rows scored so far are kept and a rerun of the same command retries the rest
  2  usage error, unknown/untrained model, no inputs, or Ray could not start / connect
  130 interrupted (Ctrl-C); rows scored so far are checkpointed, rerun to continue
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_core import settings


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m cxr_core.batch",
        description="Score a folder tree or a manifest CSV of chest X-rays with the app's pipeline on Ray "
        "(local by default, or an existing cluster), resumably. Writes DIR/results.parquet, results.csv, "
        "summary.json and optional overlays/. See docs/batch.md.",
        epilog="Exit codes: 0 done (unreadable files are rows with an error message); 1 some rows hit an internal "
        "error or the job stopped part-way (rerun to retry); 2 usage error, model unavailable, no inputs or Ray "
        "unavailable; 130 interrupted (rerun to continue).",
    )
    ap.add_argument("input", help="a folder (searched recursively), a manifest CSV with a 'path' column "
                    "(relative paths are resolved against the CSV's folder), or one image file")
    ap.add_argument("--out", required=True, type=Path, help="output folder; nothing is written outside it")
    ap.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"),
                    help="run the classifier in PyTorch (default) or ONNX Runtime fp32 / int8 from weights/onnx "
                    "(docs/export.md); overlays are always computed by PyTorch; part of model_version")
    ap.add_argument("--address", default=None,
                    help="join an existing Ray cluster: 'auto', 'host:6379' or 'ray://host:10001' "
                    "(default: start Ray in this process with this machine's cores)")
    ap.add_argument("--workers", type=int, default=None,
                    help="actors (each loads the model once; default: CPUs Ray has / --threads)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per actor (default: CPUs / workers, so workers x threads = CPUs)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all this process may use)")
    ap.add_argument("--cam", action="store_true", help="write a Grad-CAM overlay PNG per image to DIR/overlays/")
    ap.add_argument("--boxes", action="store_true",
                    help="run the detector: 'boxes' column (JSON list) and boxes drawn on the overlay")
    ap.add_argument("--age-group", default=None, choices=settings.AGE_GROUPS,
                    help="patients' age group for every input (default: the DICOM PatientAge where present)")
    ap.add_argument("--include-identifiers", action="store_true",
                    help="add an 'identifiers' column (DICOM patient/study identifiers, JSON). Off by default: "
                    "the output then holds patient data and must be protected as such")
    ap.add_argument("--batch-size", type=int, default=8, help="inputs per actor call (default 8)")
    ap.add_argument("--force", action="store_true", help="ignore stored results and score every input again")
    ap.add_argument("--ship-code", action="store_true",
                    help="with --address: upload this checkout (code and weights, not .venv/cache/checkpoints) "
                    "as the job's runtime_env working_dir")
    ap.add_argument("--ray-temp-dir", type=Path, default=None,
                    help="local Ray's temp folder (default: DIR/.ray if short enough for Unix sockets, else a "
                    "private system temp folder; removed at the end, logs kept in DIR/ray_logs)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from cxr_core.batch.inputs import InputError
    from cxr_core.batch.run import BatchConfig, BatchError, one_line, run_batch
    from cxr_core.models import ModelUnavailableError

    if args.ship_code and not args.address:
        print("--ship-code needs --address (a local run uses this checkout directly).", file=sys.stderr)
        return 2
    cfg = BatchConfig(input=args.input, out=args.out, model=args.model, backend=args.backend,
                      address=args.address, workers=args.workers,
                      threads=args.threads, num_cpus=args.num_cpus, cam=args.cam, boxes=args.boxes,
                      age_group=args.age_group, include_identifiers=args.include_identifiers,
                      batch_size=args.batch_size, force=args.force, ship_code=args.ship_code,
                      ray_temp_dir=args.ray_temp_dir, progress=not args.no_progress)
    try:
        summary = run_batch(cfg)
    except (BatchError, InputError, ModelUnavailableError, FileNotFoundError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("batch: interrupted; rows scored so far are kept. Rerun the same command to continue.", file=sys.stderr)
        return 130
    print(one_line(summary, args.out))
    if summary.get("failure"):
        print(f"batch: the Ray job stopped part-way ({summary['failure']}); rerun to retry the rest.", file=sys.stderr)
        return 1
    return 1 if summary.get("internal_errors") else 0
