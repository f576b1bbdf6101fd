"""Batch scoring of whole archives on Ray: `python -m cxr_core.batch INPUT --out DIR`.

One row per input in DIR/results.parquet (and .csv), produced by the same `pipeline.analyse`
the app runs, on a Ray Data actor pool that is local by default or an existing cluster with
`--address`. Reruns skip inputs already scored with the same model version. See docs/batch.md.

Modules: `inputs` (what to score; extension point for DICOMweb), `worker` (the actor UDF, no Ray
import), `outputs` (the output folder), `run` (Ray session and the run), `cli`, `bench`.
Importing this package does not import Ray.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv=None) -> int:
    from cxr_core.batch.cli import main as _main

    return _main(argv)
