"""Latency benchmark of every inference stage and of the whole pipeline as the app runs it.

    python -m cxr_core.bench --out bench.json [--n 30] [--threads 2] [--synthetic]

Per stage p50/p95 over `n` images (cxr3 test split, class-balanced; synthetic chest-like images
when ../shared is absent or with --synthetic):

* decode       `load_image(bytes)` (the upload path)
* quality_metrics  `assess(check_plausibility=False)`: contrast, blur, exposure only
* quality      `cxr_core.gate.quality.assess` with the not-a-CXR check, as the app runs it
* preprocess   `image_to_tensor` for each input family in use
* forward_X    one forward pass of each classifier with trained weights (batch 1), channels_last as
               the app loads it; forward_X_contiguous the same in the default layout, timed
               interleaved with it (the ratio is `ratios.channels_last_over_contiguous_X`)
* gradcam_X    `explain(clf, image)` for each classifier (preprocess + forward + backward + resize,
               i.e. what the app pays for a heatmap)
* detector     `cxr_core.detect.detect` (if importable and weights/detector.pt exists)
* lungs        `cxr_core.segment.segment` (if importable and weights/lungseg.pt exists)
* pipeline     decode -> quality -> predict -> Grad-CAM -> detect, as pages/diagnose.py runs it

plus batch throughput per classifier, peak RSS, and reference timings of torchvision
MobileNetV2/DenseNet121 (random weights, 224 px, batch 1) in the same process, so numbers from
different machines (or a machine busy with other work) can be compared as ratios.
If no classifier has trained weights the untrained V-BreathNet stands in (same architecture,
same cost) and the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import io as _io
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from cxr_core import settings
from cxr_core.provenance import cpu_model
from cxr_core.timing import Timings, loadavg, stats, time_each

TARGETS = {"pipeline_p50_ms": 1000.0, "forward_vbreathnet_p50_ms": 100.0, "gradcam_over_forward_vbreathnet": 3.0}


# --- helpers --------------------------------------------------------------------------------------


_THREADS: list[int] = []  # the thread count asked for; re-applied before every stage


def _time_each(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int = 1) -> Timings:
    """`timing.time_each` with the thread count re-applied after the warm-up: some components call
    torch.set_num_threads when they load (seen: the detector loader), and every stage must be timed
    with the thread count the benchmark reports."""
    def threads() -> None:
        if _THREADS and torch.get_num_threads() != _THREADS[0]:
            torch.set_num_threads(_THREADS[0])

    return time_each(fn, items, warmup, before=threads)


def _time_interleaved(a: Callable[[Any], Any], b: Callable[[Any], Any], items: Sequence[Any],
                      warmup: int = 1) -> tuple[Timings, Timings]:
    """`a(x)` and `b(x)` timed alternately on each item, the order flipped every item (a b, b a, ...),
    so neither gains from running second or from the machine's load drifting between two passes: one
    back-to-back pass of each had MobileNetV2's layouts 1.28x apart where interleaved runs gave 0.85x."""
    fns = (a, b)
    calls = [(k, x) for i, x in enumerate(items) for k in ((0, 1) if i % 2 == 0 else (1, 0))]
    for x in items[: max(0, warmup)]:
        a(x), b(x)
    timed = _time_each(lambda call: fns[call[0]](call[1]), calls, warmup=0)
    out = (Timings(), Timings())
    for t in out:
        t.cpu = []
    for (k, _), wall, cpu in zip(calls, timed, timed.cpu):
        out[k].append(wall)
        out[k].cpu.append(cpu)
    return out


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0, 1)


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except Exception:  # missing or broken optional component: the stage is skipped, with a reason
        return None


# --- inputs ---------------------------------------------------------------------------------------


def synthetic_images(n: int, seed: int = settings.SEED, size: int = 512) -> list[bytes]:
    """PNG bytes of simple chest-like images (dark lungs, bright mediastinum, ribs, noise)."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (x + 0.5) / size * 2 - 1, (y + 0.5) / size * 2 - 1
    out = []
    for _ in range(n):
        img = np.full((size, size), 0.1, np.float32)
        img[(u / 0.92) ** 2 + ((v - 0.1) / 1.15) ** 2 < 1] = 0.62
        for cx in (-0.42, 0.42):
            d = ((u - cx) / rng.uniform(0.3, 0.38)) ** 2 + ((v + 0.05) / rng.uniform(0.55, 0.68)) ** 2
            lung = np.clip((1.15 - d) / 0.3, 0, 1)
            img -= 0.38 * lung
            img += 0.1 * lung * (0.5 + 0.5 * np.sin((v * 9 + 1.6 * np.abs(u - cx)) * np.pi)) ** 3
        img += 0.22 * np.exp(-((u / 0.13) ** 2))
        img += cv2.GaussianBlur(rng.normal(0, 0.08, (size, size)).astype(np.float32), (0, 0), 2.0)
        arr = np.clip(np.rint(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)
        buf = _io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def real_images(n: int, seed: int = settings.SEED) -> list[bytes]:
    from cxr_core.data import sample_balanced

    return [path.read_bytes() for path, _ in sample_balanced(n, seed)]


# --- models ---------------------------------------------------------------------------------------


def _classifiers(only: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Trained classifiers (load_classifier), or the untrained V-BreathNet if none is trained."""
    from cxr_core.models import SPECS, Classifier, ModelUnavailableError, build_model, freeze, load_classifier

    clfs: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in settings.CLASSIFIERS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            clfs[name] = load_classifier(name)
            info[name] = {"weights": True, "load_ms": round((time.perf_counter() - t0) * 1000, 1)}
        except ModelUnavailableError as exc:
            info[name] = {"weights": False, "skipped": str(exc)}
    if not clfs:
        name = settings.DEFAULT_CLASSIFIER if not only else only[0]
        net, _ = build_model(name, imagenet=False)
        freeze(net)
        net = net.to(memory_format=torch.channels_last)  # as load_classifier lays out trained weights
        clfs[name] = Classifier(name, SPECS[name], net, SPECS[name].default_size, 1.0)
        info[name] = {
            "weights": False,
            "untrained_stand_in": True,
            "note": "no trained classifier found: timings use the untrained network (same architecture, same cost)",
        }
    return clfs, info


def reference_timings(reps: int = 10) -> dict[str, dict[str, float]]:
    """torchvision MobileNetV2 and DenseNet121 (weights=None), 224 px, batch 1, same process."""
    import torchvision

    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224)
    out = {}
    for name, ctor in (("mobilenet_v2", torchvision.models.mobilenet_v2), ("densenet121", torchvision.models.densenet121)):
        net = ctor(weights=None).eval()
        with torch.inference_mode():
            times = _time_each(lambda _, n=net: n(x), list(range(reps)), warmup=3)
        out[name] = stats(times)
        del net
    gc.collect()
    return out


# --- benchmark ------------------------------------------------------------------------------------


def run_bench(
    n: int = 30,
    threads: int = settings.TORCH_THREADS,
    synthetic: bool | None = None,
    batch: int = 16,
    warmup: int = 1,
    reference_reps: int | None = None,
    progress: bool = False,
    models: Sequence[str] | None = None,
) -> dict[str, Any]:
    from cxr_core.classify.explain import explain
    from cxr_core.io import load_image
    from cxr_core.preprocess import image_to_tensor, stack_standardised, to_model_tensor

    t_start = time.time()
    torch.set_num_threads(max(1, threads))
    _THREADS[:] = [max(1, threads)]
    load_before = loadavg()

    def log(msg: str) -> None:
        if progress:
            print(f"[bench {time.time() - t_start:6.1f}s] {msg}", file=sys.stderr)

    if synthetic is None:
        synthetic = not settings.CXR3_MANIFEST.is_file()
    source = "synthetic" if synthetic else "cxr3 test split (class-balanced sample)"
    raw = synthetic_images(n) if synthetic else real_images(n)
    log(f"{len(raw)} images from {source}")

    stages: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}

    stages["decode"] = stats(_time_each(lambda b: load_image(b), raw, warmup))
    images = [load_image(b) for b in raw]
    log("decode done")

    quality_mod = _optional("cxr_core.gate.quality")
    assess = getattr(quality_mod, "assess", None) if quality_mod else None
    if assess is not None:  # "quality" includes the not-a-CXR check, as the app runs it
        stages["quality_metrics"] = stats(
            _time_each(lambda im: assess(im, check_plausibility=False), images, warmup)
        )
        stages["quality"] = stats(_time_each(assess, images, warmup))
    else:
        skipped["quality"] = "cxr_core.gate.quality.assess is not available"

    clfs, clf_info = _classifiers(models)
    main_name = settings.DEFAULT_CLASSIFIER if settings.DEFAULT_CLASSIFIER in clfs else next(iter(clfs))
    main_clf = clfs[main_name]
    families = {main_clf.family: main_clf.input_size}
    for c in clfs.values():
        families.setdefault(c.family, c.input_size)
    for fam, size in families.items():  # "preprocess" = the pipeline model's family
        key = "preprocess" if fam == main_clf.family else f"preprocess_{fam}"
        stages[key] = stats(_time_each(lambda im, f=fam, s=size: image_to_tensor(im, f, s), images, warmup))
    log("quality/preprocess done")

    throughput: dict[str, Any] = {}
    for name, clf in clfs.items():
        xs = [clf.to_input(im) for im in images]
        with torch.inference_mode():
            # the app's layout (channels_last) against the default one, against which it was chosen:
            # timed interleaved per image, so a load change during the run hits both alike
            flat = copy.deepcopy(clf.model).to(memory_format=torch.contiguous_format)
            app, default = _time_interleaved(clf.model, flat, xs, warmup)
            stages[f"forward_{name}"], stages[f"forward_{name}_contiguous"] = stats(app), stats(default)
            del flat
        stages[f"gradcam_{name}"] = stats(_time_each(lambda im, c=clf: explain(c, im), images, warmup))
        # batch throughput: standardised batch of `batch` images (repeating the sample if needed)
        b = max(1, batch)
        pix = [images[i % len(images)].pixels for i in range(b)]
        xb = to_model_tensor(stack_standardised(pix, clf.input_size), clf.family)
        with torch.inference_mode():
            bt = _time_each(lambda _, m=clf.model, x=xb: m(x), [0, 1, 2], warmup=1)
        med = float(np.median(bt))
        throughput[name] = {"batch": b, "batch_ms_p50": round(med * 1000, 1), "images_per_s": round(b / med, 2)}
        log(f"{name} done")
        del xs, xb
        gc.collect()

    det_mod = _optional("cxr_core.detect")
    detect = getattr(det_mod, "detect", None) if det_mod else None
    if detect is None:
        skipped["detector"] = "cxr_core.detect.detect is not available"
    elif not settings.DETECTOR_WEIGHTS.is_file():
        skipped["detector"] = f"no detector weights ({settings.DETECTOR_WEIGHTS.name} missing)"
        detect = None
    else:
        try:
            stages["detector"] = stats(_time_each(lambda im: detect(im), images, warmup))
        except Exception as exc:  # report, don't crash the whole benchmark
            skipped["detector"] = f"detect failed: {type(exc).__name__}: {exc}"
            detect = None
    log("detector done")

    lungs_mod = _optional("cxr_core.segment")
    segment = getattr(lungs_mod, "segment", None) if lungs_mod else None
    lung_weights = Path(getattr(settings, "LUNGSEG_WEIGHTS", settings.WEIGHTS_DIR / "lungseg.pt"))
    if segment is None:
        skipped["lungs"] = "cxr_core.segment.segment is not available"
    elif not lung_weights.is_file():
        skipped["lungs"] = f"no lung segmentation weights ({lung_weights.name} missing)"
    else:
        try:
            stages["lungs"] = stats(_time_each(lambda im: segment(im), images, warmup))
        except Exception as exc:
            skipped["lungs"] = f"segment failed: {type(exc).__name__}: {exc}"
    log("lungs done")

    # The app's path for one upload: cxr_core.pipeline, which the Diagnose page calls.
    from cxr_core import pipeline as app_pipeline

    def pipeline(data: bytes) -> None:
        analysis = app_pipeline.analyse(data, classifier=main_clf)
        analysis.heatmap()
        if detect is not None:
            analysis.boxes(conf=settings.DETECTOR_MIN_CONF)

    stages["pipeline"] = stats(_time_each(pipeline, raw, warmup))
    pipeline_parts = ["decode"] + (["quality"] if assess else []) + ["predict", "gradcam"] + (["detector"] if detect else [])
    log("pipeline done")

    ref = reference_timings(reference_reps or 10)
    ref_mnv2 = ref["mobilenet_v2"]["p50_ms"]
    ratios: dict[str, float] = {k: round(v["p50_ms"] / ref_mnv2, 4) for k, v in stages.items()}
    for name in clfs:
        ratios[f"gradcam_over_forward_{name}"] = round(
            stages[f"gradcam_{name}"]["p50_ms"] / stages[f"forward_{name}"]["p50_ms"], 3
        )
        ratios[f"channels_last_over_contiguous_{name}"] = round(
            stages[f"forward_{name}"]["p50_ms"] / stages[f"forward_{name}_contiguous"]["p50_ms"], 3
        )
    ratios["densenet121_reference"] = round(ref["densenet121"]["p50_ms"] / ref_mnv2, 3)

    targets: dict[str, Any] = {"pipeline_p50_ms <= 1000": stages["pipeline"]["p50_ms"] <= TARGETS["pipeline_p50_ms"]}
    if "forward_vbreathnet" in stages:
        targets["forward_vbreathnet_p50_ms <= 100"] = stages["forward_vbreathnet"]["p50_ms"] <= 100.0
        targets["gradcam_over_forward_vbreathnet <= 3"] = ratios["gradcam_over_forward_vbreathnet"] <= 3.0

    return {
        "pipeline_p50_ms": stages["pipeline"]["p50_ms"],
        "pipeline_p95_ms": stages["pipeline"]["p95_ms"],
        "pipeline_model": main_name,
        "pipeline_stages": pipeline_parts,
        "stages": stages,
        "stages_skipped": skipped,
        "classifiers": clf_info,
        "batch_throughput": throughput,
        "peak_rss_mb": _peak_rss_mb(),
        "reference": {
            "description": "torchvision models with weights=None, 224 px, batch 1, eval, inference_mode, same process",
            "mobilenet_v2_p50_ms": ref["mobilenet_v2"]["p50_ms"],
            "densenet121_p50_ms": ref["densenet121"]["p50_ms"],
            "mobilenet_v2": ref["mobilenet_v2"],
            "densenet121": ref["densenet121"],
        },
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": targets,
        "n_images": len(raw),
        "source": source,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(),
            # the same code runs 3x slower on an AVX2-only CPU than on one with AVX-512/AMX: say which
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": load_before,
            "loadavg_at_end": loadavg(),
        },
        "warning": (
            f"machine busy: 1-min load average {load_before[0]:.1f} on {os.cpu_count()} CPUs at start; "
            "wall-clock timings are inflated (compare cpu_p50_ms and the reference ratios)"
            if load_before and load_before[0] > (os.cpu_count() or 1)
            else None
        ),
        "seconds": round(time.time() - t_start, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--n", type=int, default=30, help="images per stage (>= 30 for the report)")
    parser.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    parser.add_argument("--synthetic", action="store_true", help="synthesise images even if cxr3 is present")
    parser.add_argument("--batch", type=int, default=16, help="batch size for the throughput measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before each stage")
    parser.add_argument("--models", nargs="+", choices=settings.CLASSIFIERS, default=None,
                        help="classifiers to time (default: every one with trained weights)")
    parser.add_argument("--reference-reps", type=int, default=None, help="reference forward passes (default 10)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    result = run_bench(
        n=args.n,
        threads=args.threads,
        synthetic=True if args.synthetic else None,
        batch=args.batch,
        warmup=args.warmup,
        reference_reps=args.reference_reps,
        progress=not args.quiet,
        models=args.models,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result["stages"])
    for name, s in result["stages"].items():
        print(f"{name:<{width}}  p50 {s['p50_ms']:9.1f} ms   p95 {s['p95_ms']:9.1f} ms   x{result['ratios'][name]:.2f} ref")
    for name, reason in result["stages_skipped"].items():
        print(f"{name:<{width}}  skipped: {reason}")
    if result.get("warning"):
        print("WARNING:", result["warning"])
    print(
        f"reference MobileNetV2 {result['reference']['mobilenet_v2_p50_ms']:.1f} ms, DenseNet121 "
        f"{result['reference']['densenet121_p50_ms']:.1f} ms; peak RSS {result['peak_rss_mb']:.0f} MB; "
        f"{result['threads']} threads -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
