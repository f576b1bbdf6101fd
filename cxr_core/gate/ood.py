"""Is this a chest X-ray at all? An out-of-distribution (OOD) score for uploads.

Photographs, scanned documents, screenshots, noise and radiographs of other body parts must be
recognised and refused *before* a classifier that has only ever seen chest films gives them a
confident-looking label. The score uses frozen ImageNet MobileNetV2 features (the same shared
backbone the baselines start from, nothing is trained here) and simple statistics of real CXRs:

1. feature ``f``: ``sqrt`` of the 1280-d MobileNetV2 embedding of the standard ImageNet input
   (`cxr_core.preprocess.image_to_tensor(image, "imagenet")`: robust stretch, 224 x 224);
2. PCA of ``f`` over real CXRs -> ``k`` (48) whitened components; the score is
   ``mean(z_i^2)`` (Mahalanobis distance inside the CXR subspace, ~1 for a CXR) plus the squared
   residual outside the subspace divided by its training mean (also ~1 for a CXR);
3. threshold: a high quantile of the score on the *validation* splits times a safety margin
   (`fit` records which), so the false-rejection rate on real CXRs stays below 1 %;
4. colourfulness (``image.meta.colourfulness``, mean chroma of the source) above the quality
   gate's fail level also makes an image implausible: radiographs are greyscale.

Statistics are fitted on the TRAIN splits of cxr3, lungseg (several hospitals, adult COVID
series) and TBX11K (Chinese TB screening) so that other hospitals' CXRs count as in-distribution;
VinBigData (Vietnam) is left out of the fit entirely and serves as an external check.

Public API::

    is_chest_xray(image) -> (plausible: bool, score: float, reason: str)
    ood_score(image) -> float            # normalised: 1.0 = the threshold, higher = less CXR-like
    available() -> bool                  # weights/ood.npz present and readable

CLI::

    python -m cxr_core.ood fit --out weights/ood.npz
    python -m cxr_core.ood evaluate --out weights/ood_metrics.json
    python -m cxr_core.ood check some.png other.dcm

`cxr_core.quality.assess(image, check_plausibility=True)` uses `is_chest_xray` and fails the
image with "This does not look like a frontal chest X-ray (...)". See docs/hardening.md.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cxr_core import settings
from cxr_core.io import CXRImage, ImageLoadError, check_each, load_image

N_COMPONENTS: int = 48
FIT_QUANTILE: float = 0.995  # of the val-split scores ...
FIT_MARGIN: float = 1.15  # ... times this margin = the threshold
COLOUR_LIMIT: float = 0.12  # mean chroma; same as the quality gate's colourfulness fail level
FILE_VERSION: int = 1
BATCH: int = 32


def weights_file() -> Path:
    """Resolved at call time so tests (and CXR_WEIGHTS_DIR) can point elsewhere."""
    return Path(settings.WEIGHTS_DIR) / "ood.npz"


# --- fitted statistics ----------------------------------------------------------------------------


class OODStats:
    """Mean, PCA basis, eigenvalues, residual scale and threshold (all float64 numpy)."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, eigvals: np.ndarray, resid_mean: float,
                 threshold: float, info: dict[str, Any] | None = None) -> None:
        self.mean = np.asarray(mean, np.float64)
        self.components = np.asarray(components, np.float64)  # (k, D), orthonormal rows
        self.eigvals = np.asarray(eigvals, np.float64)  # (k,)
        self.resid_mean = float(resid_mean)
        self.threshold = float(threshold)
        self.info = dict(info or {})

    @classmethod
    def fit(cls, features: np.ndarray, n_components: int = N_COMPONENTS, info: dict | None = None) -> "OODStats":
        """PCA on (N, D) raw embeddings (the sqrt transform is applied here); threshold left at inf."""
        x = transform(features)
        if x.shape[0] < n_components + 2:
            raise ValueError(f"need more than {n_components + 2} images to fit, got {x.shape[0]}")
        mean = x.mean(axis=0)
        xc = x - mean
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        comps = vt[:n_components]
        eig = (s[:n_components] ** 2) / (x.shape[0] - 1)
        eig = np.maximum(eig, eig.max() * 1e-6)
        resid = _residual(xc, comps)
        stats = cls(mean, comps, eig, float(resid.mean()), math.inf, info)
        return stats

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Un-normalised score (about 2 for a typical CXR) for (N, D) raw embeddings."""
        xc = transform(features) - self.mean
        z = xc @ self.components.T / np.sqrt(self.eigvals)
        maha = (z**2).mean(axis=1)
        resid = _residual(xc, self.components) / max(self.resid_mean, 1e-12)
        return maha + resid

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Normalised: 1.0 = threshold; > 1 means 'not a chest X-ray'."""
        return self.raw_scores(features) / self.threshold

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            version=np.int64(FILE_VERSION),
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            eigvals=self.eigvals.astype(np.float64),
            resid_mean=np.float64(self.resid_mean),
            threshold=np.float64(self.threshold),
            info=np.frombuffer(json.dumps(self.info).encode(), dtype=np.uint8),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "OODStats":
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["version"]) != FILE_VERSION:
                raise ValueError(f"unsupported ood.npz version {int(z['version'])}")
            info = json.loads(bytes(z["info"]).decode()) if "info" in z else {}
            return cls(z["mean"], z["components"], z["eigvals"], float(z["resid_mean"]), float(z["threshold"]), info)


def transform(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float64)
    if f.ndim == 1:
        f = f[None]
    return np.sqrt(np.maximum(f, 0.0))


def _residual(xc: np.ndarray, comps: np.ndarray) -> np.ndarray:
    proj = (xc @ comps.T) @ comps
    return ((xc - proj) ** 2).sum(axis=1)


# --- backbone (loaded once per process) ------------------------------------------------------------

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _backbone_cached() -> Any:
    from cxr_core.models import build_model, freeze

    model, source = build_model("mobilenet_v2", imagenet=True)
    if not source:
        raise FileNotFoundError(
            f"The ImageNet MobileNetV2 weights were not found ({settings.MOBILENET_V2_IMAGENET}); "
            "the chest X-ray plausibility check needs them."
        )
    return freeze(model)


def backbone() -> Any:
    """The frozen ImageNet MobileNetV2 (thread-safe, built once per process)."""
    if _backbone_cached.cache_info().currsize:
        return _backbone_cached()
    with _LOCK:
        return _backbone_cached()


@functools.lru_cache(maxsize=4)
def _stats_cached(path: str, mtime_ns: int) -> OODStats:
    return OODStats.load(path)


def load_stats(path: str | Path | None = None) -> OODStats | None:
    """The fitted statistics (cached by path and modification time), or None if absent/unreadable."""
    path = Path(path) if path is not None else weights_file()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    try:
        with _LOCK:
            return _stats_cached(str(path), mtime)
    except (OSError, ValueError, KeyError):
        return None


def available(path: str | Path | None = None) -> bool:
    return load_stats(path) is not None and settings.MOBILENET_V2_IMAGENET.is_file()


def embed_images(images: Sequence[CXRImage | np.ndarray], batch: int = BATCH) -> np.ndarray:
    """(N, 1280) float32 MobileNetV2 embeddings of the standard ImageNet model input."""
    import torch

    from cxr_core.preprocess import image_to_tensor

    model = backbone()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.cat([image_to_tensor(im, "imagenet") for im in images[i : i + batch]])
            out.append(model.embed(x).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


# --- the check -------------------------------------------------------------------------------------


def _colourfulness(image: CXRImage | np.ndarray) -> float:
    return float(image.meta.colourfulness) if isinstance(image, CXRImage) else 0.0


def ood_score(image: CXRImage | np.ndarray, stats: OODStats | None = None) -> float:
    """Normalised OOD score of one image (1.0 = threshold). Raises FileNotFoundError without weights."""
    stats = stats or load_stats()
    if stats is None:
        raise FileNotFoundError(f"{weights_file()} is missing; run: python -m cxr_core.ood fit")
    return float(stats.scores(embed_images([image]))[0])


def is_chest_xray(image: CXRImage | np.ndarray, stats: OODStats | None = None) -> tuple[bool, float, str]:
    """(plausible, score, reason). `score` is normalised so that 1.0 is the rejection threshold
    (higher = less like the training radiographs); `reason` is a short plain-language phrase,
    empty when the image is plausible. Raises FileNotFoundError when weights/ood.npz is missing."""
    colour = _colourfulness(image)
    score = ood_score(image, stats)
    if colour > COLOUR_LIMIT:
        return False, score, (
            f"it is a colour image (colourfulness {colour:.2f}); radiographs are greyscale, so this looks "
            "like a photograph or a screenshot"
        )
    if score > 1.0:
        return False, score, (
            f"its content is unlike the chest radiographs the models were trained on: out-of-distribution "
            f"score {score:.2f}, limit 1.00; it may be a photograph, a document, another body part or a "
            "rotated or inverted film"
        )
    return True, score, ""


# --- real data ------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def real_cxr_paths(dataset: str, split: str) -> list[Path]:
    """Image paths of one real CXR data set and split ('all' = every split); [] when absent."""
    try:
        if dataset == "cxr3":
            from cxr_core.data import manifest_rows

            return sorted(settings.CXR3_DIR / r["path"] for r in manifest_rows(split))
        if dataset == "lungseg":
            rows = _read_csv(settings.LUNGSEG_DIR / "manifest.csv")
            files = {p.stem: p for p in (settings.LUNGSEG_DIR / "images").iterdir()}
            return sorted(files[r["id"]] for r in rows if split in ("all", r["split"]) and r["id"] in files)
        if dataset in ("tbx11k", "vinbigdata"):
            root = settings.TBX11K_DIR if dataset == "tbx11k" else settings.VINBIG_DIR
            rows = _read_csv(root / "labels.csv")
            ids = {r["image_id"] for r in rows if split in ("all", r["split"])}
            files = {p.stem: p for p in (root / "images").iterdir()}
            return sorted(files[i] for i in ids if i in files)
    except (OSError, KeyError):
        return []
    raise KeyError(f"unknown data set {dataset!r}")


REAL_DATASETS = ("cxr3", "lungseg", "tbx11k", "vinbigdata")
FIT_DATASETS = ("cxr3", "lungseg", "tbx11k")  # VinBigData: held out entirely (external hospital)


def _sample(paths: list[Path], limit: int, seed: int = settings.SEED) -> list[Path]:
    if limit and len(paths) > limit:
        idx = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
        return [paths[i] for i in sorted(idx)]
    return paths


def features_for_paths(paths: Sequence[Path], cache_name: str | None = None, progress: bool = True) -> np.ndarray:
    """Embeddings for image files, cached under settings.CACHE_DIR/ood (derived data, never committed)."""
    key = hashlib.sha1("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]
    cache = Path(settings.CACHE_DIR) / "ood" / f"{cache_name}_{key}.npy" if cache_name else None
    if cache is not None and cache.is_file():
        return np.load(cache, allow_pickle=False)
    feats: list[np.ndarray] = []
    t0 = time.time()
    for i in range(0, len(paths), BATCH):
        imgs = []
        for p in paths[i : i + BATCH]:
            try:
                imgs.append(load_image(p))
            except ImageLoadError as exc:  # a real data set file that cannot be read: report, skip
                print(f"  unreadable, skipped: {p.name}: {exc}", file=sys.stderr)
        if imgs:
            feats.append(embed_images(imgs))
        if progress:
            done = min(i + BATCH, len(paths))
            print(f"\r  {cache_name or 'features'}: {done}/{len(paths)} ({time.time() - t0:.0f} s)",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    out = np.concatenate(feats) if feats else np.zeros((0, 1280), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out


# --- probe inputs: non-CXRs made offline and borderline real films live in cxr_core/gate/ood_inputs.py ------


# --- CLI --------------------------------------------------------------------------------------------


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def cmd_fit(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    train_feats, val_feats, counts = [], {}, {"train": {}, "val": {}}
    for ds in FIT_DATASETS:
        paths = real_cxr_paths(ds, "train")
        if ds == "cxr3":
            paths = _sample(paths, args.max_cxr3)
        if not paths:
            print(f"{ds}: not found, skipped", file=sys.stderr)
            continue
        f = features_for_paths(paths, f"{ds}_train")
        train_feats.append(f)
        counts["train"][ds] = int(len(f))
    if not train_feats:
        print("no training CXRs found (set CXR_SHARED_DIR)", file=sys.stderr)
        return 2
    for ds in FIT_DATASETS:
        paths = real_cxr_paths(ds, "val")
        if paths:
            val_feats[ds] = features_for_paths(paths, f"{ds}_val")
            counts["val"][ds] = int(len(val_feats[ds]))
    feats = np.concatenate(train_feats)
    stats = OODStats.fit(feats, args.components)
    val = np.concatenate(list(val_feats.values()))
    val_raw = stats.raw_scores(val)
    q = float(np.quantile(val_raw, args.quantile))
    stats.threshold = q * args.margin
    train_raw = stats.raw_scores(feats)
    stats.info = {
        "backbone": "MobileNetV2 ImageNet features (" + settings.MOBILENET_V2_IMAGENET.name + ")",
        "feature": "sqrt(embed(image_to_tensor(image, 'imagenet')))",
        "n_components": int(args.components),
        "fit_counts": counts["train"],
        "val_counts": counts["val"],
        "threshold_rule": f"{args.quantile} quantile of val raw scores x {args.margin}",
        "val_quantile_raw": q,
        "threshold_raw": stats.threshold,
        "val_false_rejection": float((val_raw > stats.threshold).mean()),
        "train_false_rejection": float((train_raw > stats.threshold).mean()),
        "val_raw_percentiles": {str(p): float(np.percentile(val_raw, p)) for p in (50, 90, 99, 99.5, 100)},
        "colour_limit": COLOUR_LIMIT,
        "date": time.strftime("%Y-%m-%d"),
    }
    stats.save(args.out)
    print(json.dumps(stats.info, indent=2))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} kB)")
    return 0


def _rate(flags: Iterable[bool]) -> dict[str, Any]:
    f = list(flags)
    return {"n": len(f), "flagged": int(sum(f)), "rate": (float(sum(f)) / len(f)) if f else None}


def evaluate(stats: OODStats, max_cxr3: int = 0, borderline_n: int = 60) -> dict[str, Any]:
    """False-rejection rate on real CXR test data and detection rate on non-CXR inputs."""
    from cxr_core.gate.ood_inputs import borderline_inputs, non_cxr_inputs

    out: dict[str, Any] = {"threshold_raw": stats.threshold, "fit": stats.info, "real_cxr_false_rejection": {},
                           "non_cxr_detection": {}, "borderline_detection": {}}
    for ds in REAL_DATASETS:
        split = "all" if ds == "vinbigdata" else "test"
        paths = real_cxr_paths(ds, split)
        if ds == "cxr3":
            paths = _sample(paths, max_cxr3)
        if not paths:
            continue
        f = features_for_paths(paths, f"{ds}_{split}")
        s = stats.scores(f)
        entry = _rate(s > 1.0)
        entry.update(split=split, in_fit=ds in FIT_DATASETS and split != "all",
                     max_score=float(s.max()), p99_score=float(np.percentile(s, 99)),
                     rejected=[paths[i].name for i in np.flatnonzero(s > 1.0)][:20])
        out["real_cxr_false_rejection"][ds] = entry
    allreal = [v for v in out["real_cxr_false_rejection"].values()]
    if allreal:
        n = sum(v["n"] for v in allreal)
        k = sum(v["flagged"] for v in allreal)
        out["real_cxr_false_rejection"]["all"] = {"n": n, "flagged": k, "rate": k / n}
    for kind, imgs in non_cxr_inputs().items():
        s = stats.scores(embed_images(imgs))
        colour = np.array([im.meta.colourfulness > COLOUR_LIMIT for im in imgs])
        entry = _rate((s > 1.0) | colour)
        entry.update(by_features=int((s > 1.0).sum()), by_colour=int(colour.sum()),
                     min_score=float(s.min()), median_score=float(np.median(s)))
        out["non_cxr_detection"][kind] = entry
    n = sum(v["n"] for v in out["non_cxr_detection"].values())
    k = sum(v["flagged"] for v in out["non_cxr_detection"].values())
    out["non_cxr_detection"]["all"] = {"n": n, "flagged": k, "rate": k / max(n, 1)}
    test_paths = _sample(real_cxr_paths("cxr3", "test"), borderline_n, seed=1)
    for kind, imgs in borderline_inputs(test_paths).items():
        if imgs:
            s = stats.scores(embed_images(imgs))
            entry = _rate(s > 1.0)
            entry.update(median_score=float(np.median(s)))
            out["borderline_detection"][kind] = entry
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    stats = load_stats(args.weights)
    if stats is None:
        print(f"{args.weights} not found; run: python -m cxr_core.ood fit", file=sys.stderr)
        return 2
    res = evaluate(stats, args.max_cxr3, args.borderline)
    res["date"] = time.strftime("%Y-%m-%d")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print("false-rejection rate on real CXRs (must be < 1 %):")
    for ds, v in res["real_cxr_false_rejection"].items():
        print(f"  {ds:12s} n={v['n']:5d} rejected={v['flagged']:4d}  {100 * v['rate']:.2f} %")
    print("detection rate on non-CXR inputs:")
    for kind, v in res["non_cxr_detection"].items():
        print(f"  {kind:12s} n={v['n']:5d} flagged={v['flagged']:4d}  {100 * v['rate']:.1f} %")
    print("borderline (real CXRs transformed; reported, no target):")
    for kind, v in res["borderline_detection"].items():
        print(f"  {kind:12s} n={v['n']:5d} flagged={v['flagged']:4d}  {100 * v['rate']:.1f} %")
    print(f"wrote {args.out}")
    worst = max((v["rate"] for k, v in res["real_cxr_false_rejection"].items() if k != "all"), default=0.0)
    return 0 if worst < 0.01 else 1


def cmd_check(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    if not available():
        print(f"{weights_file()} not found; run: python -m cxr_core.ood fit", file=sys.stderr)
        return 2

    def judge(p: object, img: CXRImage) -> bool:
        ok, score, reason = is_chest_xray(img)
        print(f"{p}: {'chest X-ray' if ok else 'NOT a chest X-ray'}  score={score:.2f}  {reason}")
        return ok

    return check_each(args.files, judge)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.ood", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fit", help="fit PCA statistics on real CXR train splits and a threshold on val")
    p.add_argument("--out", default=str(weights_file()))
    p.add_argument("--components", type=int, default=N_COMPONENTS)
    p.add_argument("--quantile", type=float, default=FIT_QUANTILE)
    p.add_argument("--margin", type=float, default=FIT_MARGIN)
    p.add_argument("--max-cxr3", type=int, default=1200, help="random subset of cxr3 train (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("evaluate", help="false rejections on real CXR test sets, detection of non-CXRs")
    p.add_argument("--weights", default=str(weights_file()))
    p.add_argument("--out", default=str(Path(settings.WEIGHTS_DIR) / "ood_metrics.json"))
    p.add_argument("--max-cxr3", type=int, default=0, help="random subset of cxr3 test (0 = all)")
    p.add_argument("--borderline", type=int, default=60, help="cxr3 test images to rotate / invert")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("check", help="is each file a chest X-ray?")
    p.add_argument("files", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_check)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
