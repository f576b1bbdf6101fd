"""Benchmark of batch scoring: the plain `predict` loop against Ray with 1 and 2 actors.

    python -m cxr_core.batch.bench --n 500 --out docs/batch_bench.json
    python -m cxr_core.batch.bench --n 40 --out docs/batch_bench_smoke.json --label "smoke run, CPU busy"

On the same N cxr3 test images (seeded sample; --synthetic writes chest phantoms instead), in
one process and one after the other:

* plain      `pipeline.analyse(path)` in a loop, as `python -m cxr_core.predict` runs it, with
             torch threads = the CPUs, then again with 1 thread (the better of the two is "the best
             single process")
* ray_1      `run_batch` with 1 actor x all CPUs as threads
* ray_2      `run_batch` with 2 actors x CPUs/2 threads

Per run: images/s over all N (for Ray: from submitting the dataset to the last row, so actor
start-up and model loading count), steady images/s (rows that arrived after the first batch, over
the time since it arrived; batches of 4), Ray start-up
seconds, peak RSS per actor (each actor's ru_maxrss, reported with every batch it returns),
and the load average before and after (other work on the machine skews every figure; the JSON
says so). The scaling model for N machines is derived from these numbers (docs/batch.md).

Why a separate module: `cxr_core.bench` measures single-image latency per stage; this measures
throughput of whole runs, which needs Ray and real files on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_core import settings
from cxr_core.timing import loadavg

BATCH_SIZE = 4  # small batches, so the steady rate (rows after the first batch) has a fine time grain


def _inputs(n: int, synthetic: bool, work: Path) -> tuple[list[Path], str]:
    """N image files: a seeded sample of the cxr3 test split, or phantoms written under `work`."""

    import numpy as np

    if not synthetic and settings.CXR3_MANIFEST.is_file():
        from cxr_core.data import manifest_rows

        rows = manifest_rows("test")
        idx = np.random.default_rng(settings.SEED).permutation(len(rows))[:n]
        return [(settings.CXR3_DIR / rows[i]["path"]).resolve() for i in sorted(idx)], "cxr3 test split"
    from PIL import Image

    sys.path.insert(0, str(settings.ROOT / "tests"))
    from conftest import (  # the tests' phantom, so no data is downloaded
        chest_phantom,
        to_uint8,
    )

    folder = work / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"phantom_{i:04d}.png"
        Image.fromarray(to_uint8(chest_phantom(224, seed=i))).save(p)
        paths.append(p)
    return paths, "synthetic chest phantoms (224 px)"


def _plain(paths: list[Path], model: str, threads: int) -> dict[str, Any]:
    import torch

    from cxr_core import pipeline
    from cxr_core.models import load_classifier

    torch.set_num_threads(threads)
    t = time.perf_counter()
    clf = load_classifier(model)
    load_s = time.perf_counter() - t
    for p in paths[:2]:  # warm-up, not counted (first-call allocations)
        pipeline.analyse(p, classifier=clf)
    errors = 0
    t = time.perf_counter()
    for p in paths:
        try:
            pipeline.analyse(p, classifier=clf)
        except pipeline.ImageLoadError:
            errors += 1
    s = time.perf_counter() - t
    return {"threads": threads, "model_load_s": round(load_s, 3), "seconds": round(s, 3),
            "images_per_s": round(len(paths) / s, 3), "errors": errors,
            "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _ray(paths: list[Path], model: str, workers: int, cpus: int, work: Path, name: str) -> dict[str, Any]:
    from cxr_core.batch.run import BatchConfig, run_batch

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "inputs.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in paths))
    arrivals: list[float] = []
    rss: dict[int, float] = {}

    def on_row(row: dict[str, Any]) -> None:
        arrivals.append(time.perf_counter())
        if row.get("_pid") is not None:
            rss[row["_pid"]] = max(rss.get(row["_pid"], 0.0), row["_rss_mb"] or 0.0)

    cfg = BatchConfig(input=str(manifest), out=folder / "out", model=model, workers=workers, num_cpus=cpus,
                      force=True, progress=False, batch_size=BATCH_SIZE, ray_temp_dir=Path(tempfile.mkdtemp(prefix="cxr-ray-")))
    t0 = time.perf_counter()
    summary = run_batch(cfg, on_row=on_row)
    shutil.rmtree(cfg.ray_temp_dir, ignore_errors=True)
    scoring = summary["seconds"]["scoring"]
    steady = None
    # rows arrive a batch at a time: count only rows that arrived after the first batch did
    later = [t for t in arrivals if t - arrivals[0] > 0.05] if arrivals else []
    if later and later[-1] > arrivals[0]:
        steady = round(len(later) / (later[-1] - arrivals[0]), 3)
    return {"workers": summary["ray"]["workers"], "threads_per_worker": summary["ray"]["threads_per_worker"],
            "ray_start_s": summary["seconds"]["ray_start"], "first_row_s": summary["seconds"]["first_row"],
            "scoring_s": scoring, "images_per_s": summary["images_per_s"], "steady_images_per_s": steady,
            "errors": summary["errors"], "wall_s": round(time.perf_counter() - t0, 3),
            "actors_that_scored": len(rss), "peak_rss_mb_per_actor": sorted(rss.values()), "ray_version": summary["ray"]["version"],
            "model_version": summary["model_version"]}


def scaling_model(best_plain: float, ray2: dict[str, Any], cpus: int) -> dict[str, Any]:
    """Throughput of a cluster from the measured per-actor rate and the fixed overhead.

    time(M images, K one-thread actors) ~= overhead + M / (K * r), with r = steady per-actor rate
    measured at 1 thread/actor here and overhead = Ray start-up + time to the first row (actor
    start and model load, paid once per run, in parallel on all nodes). This ignores I/O limits
    of the shared file system and assumes other machines' cores are as fast as these.
    """
    if not ray2.get("steady_images_per_s"):
        return {}
    r = ray2["steady_images_per_s"] / max(1, ray2["workers"])
    overhead = (ray2["ray_start_s"] or 0) + (ray2["first_row_s"] or 0)
    return {
        "per_actor_images_per_s": round(r, 3),
        "overhead_s": round(overhead, 3),
        "formula": "seconds(M, K actors) = overhead_s + M / (K * per_actor_images_per_s)",
        "ray2_steady_over_best_plain": round(ray2["steady_images_per_s"] / best_plain, 3),
        "examples_hours_for_50k_images": {f"{k}_actors": round((overhead + 50_000 / (k * r)) / 3600, 2)
                                          for k in (cpus, 16, 64)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.batch.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="images (default 500)")
    ap.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print only)")
    ap.add_argument("--label", default="", help="conditions of this run, stored in the JSON (e.g. 'CPU busy')")
    ap.add_argument("--synthetic", action="store_true", help="chest phantoms instead of cxr3 test images")
    ap.add_argument("--skip", nargs="*", default=[], choices=["plain", "ray_1", "ray_2"])
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from cxr_core.batch.run import local_cpus
    from cxr_core.provenance import cpu_model

    cpus = local_cpus()
    work = Path(tempfile.mkdtemp(prefix="cxr-batch-bench-"))
    try:
        paths, source = _inputs(args.n, args.synthetic, work)
        result: dict[str, Any] = {
            "label": args.label, "n": len(paths), "inputs": source, "model": args.model,
            "machine": {"cpus": cpus, "cpu_model": cpu_model(), "python": platform.python_version()},
            "load_avg_before": loadavg(),
            "command": "python -m cxr_core.batch.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        runs: dict[str, Any] = {}
        if "plain" not in args.skip:
            print(f"plain loop on {len(paths)} images ({cpus} threads, then 1 thread) ...", file=sys.stderr)
            runs["plain"] = _plain(paths, args.model, cpus)
            if cpus > 1:
                runs["plain_1thread"] = _plain(paths, args.model, 1)
        for name, workers in (("ray_1", 1), ("ray_2", min(2, cpus))):
            if name in args.skip:
                continue
            print(f"{name}: Ray with {workers} actor(s) ...", file=sys.stderr)
            runs[name] = _ray(paths, args.model, workers, cpus, work, name)
        result["runs"] = runs
        result["load_avg_after"] = loadavg()
        if "plain" in runs and "ray_2" in runs:
            best = max(runs["plain"]["images_per_s"], runs.get("plain_1thread", {}).get("images_per_s", 0))
            result["ray_2_vs_best_single_process"] = {
                "best_single_process_images_per_s": best,
                "ray_2_images_per_s_incl_startup": runs["ray_2"]["images_per_s"],
                "ray_2_steady_images_per_s": runs["ray_2"]["steady_images_per_s"],
                "goal": "ray_2 within 10 % of the best single process",
                "within_10pct_steady": bool(runs["ray_2"]["steady_images_per_s"]
                                            and runs["ray_2"]["steady_images_per_s"] >= 0.9 * best),
            }
            result["scaling_model"] = scaling_model(best, runs["ray_2"], cpus)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
