"""PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8, per classifier, in one run, as ratios to PyTorch.

    python -m cxr_core.export.bench --models vbreathnet --out docs/export_bench.json
    python -m cxr_core.export.bench --models vbreathnet --n-eval 60 --reps 30 --out docs/export_bench_smoke.json \\
        --label "smoke run on a loaded 2-core machine"

Per model and backend (`torch`, `onnx`, `onnx-int8`; files from weights/onnx or --onnx-dir):

* file size of what the backend loads (weights/NAME.pt for torch);
* peak RSS of a fresh process that only loads the classifier and predicts --rss-n test films
  through `classify.predict` (so it imports torch, as cxr_core does), and for the ONNX files also
  `ort_only`: a process with only numpy + onnxruntime that runs the session on ready inputs
  (what a device without PyTorch would hold);
* latency of the forward pass at batch 1 (`clf.model(x)` in inference mode, the call
  `classify.predict` makes; preprocessing is the same code for every backend and left out),
  p50/p95 over --reps calls with 1 and 2 threads, backends interleaved call by call so that load
  from other processes hits all of them alike;
* batch throughput (images/s at --batch, same interleaving);
* accuracy / macro-F1 / ECE / answered share (the card's abstention threshold) on --n-eval test
  films (0 = the whole split) with evaluate.py's metric functions, and the largest probability
  difference to PyTorch.

Every figure of a backend is also given as a ratio to PyTorch from the same run (`ratios`).
The load average before and after is in the JSON: on a shared machine only the ratios mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_core import settings
from cxr_core.export import BACKENDS
from cxr_core.timing import loadavg


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000.0, q)), 3)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM from /proc; exec starts it afresh, unlike ru_maxrss,
    which a child started by a large parent may inherit)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def interleaved(calls: dict[str, Any], reps: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call for each named zero-argument callable, calling them in turn `reps` times."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    out: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t)
    return out


def file_of(name: str, backend: str, onnx_dir: Path | None) -> Path:
    from cxr_core.export.backend import onnx_file
    from cxr_core.models import weights_path

    return weights_path(name) if backend == "torch" else onnx_file(name, backend, onnx_dir)


def rss_child(name: str, backend: str, n: int, onnx_dir: str | None) -> dict[str, Any]:
    """(in a fresh process) load `name` on `backend`, predict n films, report peak RSS."""
    import torch

    from cxr_core import classify
    from cxr_core.export.backend import load
    from cxr_core.io import load_image

    torch.set_num_threads(1)
    clf = load(name, backend, threads=1, onnx_dir=onnx_dir)
    try:
        from cxr_core.data import manifest_rows

        rows = manifest_rows("test")[:n]
        images = [load_image(settings.CXR3_DIR / r["path"]) for r in rows]
    except FileNotFoundError:
        from cxr_core.io import CXRImage  # noqa: F401  (synthetic films when cxr3 is absent)
        rng = np.random.default_rng(0)
        import io as _io

        from PIL import Image

        images = []
        for _ in range(n):
            buf = _io.BytesIO()
            Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(buf, "PNG")
            images.append(load_image(buf.getvalue(), "x.png"))
    for im in images:
        classify.predict(im, clf)
    return {"peak_rss_mb": peak_rss_mb(), "n_predicted": len(images)}


def ort_only_child(path: str, inputs: str) -> dict[str, Any]:
    """(in a fresh process, importing only numpy and onnxruntime) run the session on ready inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.load(inputs)
    for i in range(len(x)):
        sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})
    heavy = sorted(m for m in ("torch", "torchvision", "cv2", "cxr_core") if m in sys.modules)
    return {"peak_rss_mb": peak_rss_mb(), "n_predicted": int(len(x)), "also_imported": heavy}


def _run_child(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, YOLO_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "cxr_core.export.bench", *args], capture_output=True, text=True,
                         env=env, cwd=str(settings.ROOT) if hasattr(settings, "ROOT") else None)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_model(name: str, backends: Sequence[str], *, films: Any, reps: int, batch: int, threads: Sequence[int],
                rss_n: int, onnx_dir: Path | None, log: Any = print) -> dict[str, Any]:
    import torch

    from cxr_core.classify import abstain_threshold
    from cxr_core.export import to_onnx
    from cxr_core.export.backend import load

    ref_clf = load(name, "torch")
    out: dict[str, Any] = {"backends": {}, "n_eval": len(films), "films": films.describe()}
    loaded: dict[tuple[str, int], Any] = {}
    for b in backends:
        for t in threads:
            loaded[(b, t)] = load(name, b, threads=t, onnx_dir=onnx_dir)
    for b in backends:
        f = file_of(name, b, onnx_dir)
        out["backends"][b] = {"file": f.name, "file_mb": round(f.stat().st_size / 1e6, 3)}

    # accuracy and agreement (threads: the largest asked for)
    tmax = max(threads)
    torch.set_num_threads(tmax)
    logits = {b: to_onnx.logits_of(lambda x, c=loaded[(b, tmax)]: _fwd(c, x), films) for b in backends}
    ref = logits.get("torch")
    if ref is None:
        ref = to_onnx.logits_of(lambda x: _fwd(ref_clf, x), films)
    thr = abstain_threshold(ref_clf)
    for b in backends:
        cmp = to_onnx.compare(ref, logits[b], ref_clf.temperature, films.labels, thr)
        out["backends"][b]["quality"] = {**cmp["this"], "max_abs_prob_diff_vs_torch": cmp["max_abs_prob_diff"],
                                         "class_agreement_vs_torch": cmp["class_agreement"],
                                         "accuracy_points_vs_torch": cmp["accuracy_points_vs_torch"]}
        log(f"{name} {b}: accuracy {cmp['this']['accuracy']:.4f}, max |prob diff| vs torch {cmp['max_abs_prob_diff']:.2e}")

    # latency at batch 1 and throughput at `batch`, interleaved
    one = [films.batch(i, i + 1) for i in range(min(len(films), 16))]
    big = films.batch(0, min(batch, len(films)))
    for t in threads:
        torch.set_num_threads(t)
        k = {"i": 0}

        def caller(c: Any) -> Any:
            def f() -> None:
                _fwd(c, one[k["i"] % len(one)])
            return f

        calls = {b: caller(loaded[(b, t)]) for b in backends}
        times = interleaved(calls, reps)
        for b in backends:
            out["backends"][b][f"latency_ms_batch1_threads{t}"] = {"p50": _pct(times[b], 50), "p95": _pct(times[b], 95),
                                                                  "n": len(times[b])}
        bt = interleaved({b: (lambda c=loaded[(b, t)]: _fwd(c, big)) for b in backends}, max(3, reps // 10), warmup=1)
        for b in backends:
            out["backends"][b][f"throughput_img_s_batch{len(big)}_threads{t}"] = round(len(big) / float(np.median(bt[b])), 2)
        log(f"{name} threads={t}: " + ", ".join(
            f"{b} p50 {out['backends'][b][f'latency_ms_batch1_threads{t}']['p50']:.1f} ms" for b in backends))

    # peak RSS in fresh processes
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "inputs.npy"
        np.save(npy, films.batch(0, min(rss_n, len(films))).numpy())
        for b in backends:
            rss = {"load_and_predict": _run_child(["--rss-child", name, b, "--rss-n", str(rss_n)]
                                                  + (["--onnx-dir", str(onnx_dir)] if onnx_dir else []))}
            if b != "torch":
                rss["ort_only"] = _run_child(["--ort-only-child", str(file_of(name, b, onnx_dir)), str(npy)])
            out["backends"][b]["peak_rss_mb"] = rss
            log(f"{name} {b}: peak RSS {rss}")
    out["ratios_to_torch"] = ratios(out["backends"]) if "torch" in backends else None
    return out


def _fwd(clf: Any, x: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return clf.model(x).float().numpy()


def ratios(backends: dict[str, Any]) -> dict[str, Any]:
    """Each backend's figures over PyTorch's (latency: torch / backend = speed-up; the rest: backend / torch)."""
    ref = backends["torch"]
    out: dict[str, Any] = {}
    for b, d in backends.items():
        if b == "torch":
            continue
        r: dict[str, Any] = {"file_size": round(d["file_mb"] / ref["file_mb"], 4)}
        for k, v in d.items():
            if k.startswith("latency_ms"):
                r[f"speedup_{k.replace('latency_ms_', '')}_p50"] = round(ref[k]["p50"] / v["p50"], 3)
                r[f"speedup_{k.replace('latency_ms_', '')}_p95"] = round(ref[k]["p95"] / v["p95"], 3)
            elif k.startswith("throughput"):
                r[k] = round(v / ref[k], 3)
        rr, rt = d.get("peak_rss_mb", {}), ref.get("peak_rss_mb", {})
        base = (rt.get("load_and_predict") or {}).get("peak_rss_mb")
        for kind in ("load_and_predict", "ort_only"):
            v = (rr.get(kind) or {}).get("peak_rss_mb")
            if v and base:
                r[f"peak_rss_{kind}"] = round(v / base, 3)
        q, qt = d["quality"], ref["quality"]
        r["accuracy_points"] = round(100 * (q["accuracy"] - qt["accuracy"]), 3)
        r["macro_f1_points"] = round(100 * (q["macro_f1"] - qt["macro_f1"]), 3)
        r["ece_difference"] = round(q["ece"] - qt["ece"], 5)
        if "answered_share" in q:
            r["answered_share_points"] = round(100 * (q["answered_share"] - qt["answered_share"]), 3)
        out[b] = r
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.export.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vbreathnet"], choices=settings.CLASSIFIERS)
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--onnx-dir", type=Path, default=None, help="where the .onnx files are (default weights/onnx)")
    ap.add_argument("--n-eval", type=int, default=0, help="test films for accuracy (0 = the whole split)")
    ap.add_argument("--reps", type=int, default=200, help="timed batch-1 calls per backend and thread count")
    ap.add_argument("--batch", type=int, default=32, help="batch size for throughput")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rss-n", type=int, default=20, help="films the peak-RSS processes predict")
    ap.add_argument("--seed", type=int, default=settings.SEED)
    ap.add_argument("--label", default="", help="what kind of run this is (written into the JSON)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--rss-child", nargs=2, metavar=("MODEL", "BACKEND"), help=argparse.SUPPRESS)
    ap.add_argument("--ort-only-child", nargs=2, metavar=("ONNX", "NPY"), help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ort_only_child:
        print(json.dumps(ort_only_child(*args.ort_only_child)))
        return 0
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child[0], args.rss_child[1], args.rss_n,
                                   str(args.onnx_dir) if args.onnx_dir else None)))
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    import random

    import torch

    from cxr_core.export import to_onnx
    from cxr_core.models import ModelUnavailableError, load_classifier
    from cxr_core.provenance import cpu_model

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "command": "python -m cxr_core.export.bench " + " ".join(shlex.quote(a) for a in argv),
        "label": args.label,
        "what": "forward pass only (clf.model(x) in inference mode, as classify.predict calls it); preprocessing "
                "excluded (identical code for every backend). Ratios are to PyTorch fp32 in this same run.",
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
                    **to_onnx.versions()},
        "loadavg_before": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "models": {},
    }
    for name in args.models:
        try:
            clf = load_classifier(name)
            films = to_onnx.load_films("test", clf.family, clf.input_size, n=args.n_eval or None, seed=args.seed,
                                       progress=True)
            result["models"][name] = bench_model(name, args.backends, films=films, reps=args.reps, batch=args.batch,
                                                 threads=args.threads, rss_n=args.rss_n, onnx_dir=args.onnx_dir, log=log)
        except (ModelUnavailableError, FileNotFoundError) as exc:
            log(f"bench: {name}: {exc}")
            result["models"][name] = {"error": str(exc)}
    result["loadavg_after"] = loadavg()
    text = json.dumps(to_onnx.clean(result), indent=1, allow_nan=False) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text)
    return 0 if all("error" not in m for m in result["models"].values()) else 2


if __name__ == "__main__":
    raise SystemExit(main())
