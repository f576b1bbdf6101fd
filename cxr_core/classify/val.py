"""Metrics for the three-class classifiers, and the evaluation CLI.

    python -m cxr_core.evaluate --model vbreathnet --data ../shared/data/cxr3/manifest.csv --split test --out metrics.json
    python -m cxr_core.evaluate --model vbreathnet --data path/to/folder_with_class_subfolders --out metrics.json

Metrics come from scikit-learn. Per-group metrics (per `source` and `age_group` when the
manifest has them) are part of every report because in cxr3 the classes differ by source and
age, so the overall accuracy alone overstates what the model has learned.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)
from tqdm import tqdm

from cxr_core import settings, stats
from cxr_core.classify import abstain_threshold, calibrated_probs, decide
from cxr_core.io import CXRImage, load_image
from cxr_core.models import load_classifier, weights_path
from cxr_core.provenance import weights_sha256

GROUP_COLUMNS = ("source", "age_group")
ECE_BINS = 15


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error of the top-class confidence, with the per-bin curve."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    centers, acc, mean_conf, count = [], [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        n = int(in_bin.sum())
        if n == 0:
            continue
        a, c = float(correct[in_bin].mean()), float(conf[in_bin].mean())
        ece += n / len(conf) * abs(a - c)
        centers.append(float((lo + hi) / 2))
        acc.append(a)
        mean_conf.append(c)
        count.append(n)
    return {"ece": float(ece), "bin_centers": centers, "accuracy": acc, "confidence": mean_conf, "count": count}


def _core_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str] = settings.CLASSES) -> dict[str, Any]:
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def compute_metrics(
    y_true: Sequence[int], probs: np.ndarray, groups: pd.DataFrame | None = None,
    classes: Sequence[str] = settings.CLASSES,
) -> dict[str, Any]:
    """All classifier metrics for one set of predictions; `groups` holds per-row group columns and
    `classes` names the columns of `probs` (the classifier's classes; cxr3's by default).

    With a `patient_or_cluster_id` column in `groups`, also `ci95`: 95 % intervals of accuracy, macro-F1
    and ECE by a bootstrap over patient groups (cxr_core.stats; films of one patient are not
    independent), and `ci95_method` saying how they were drawn."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    out = _core_metrics(y_true, probs, classes)
    out["roc_auc"], out["roc_curve"] = {}, {}
    for i, c in enumerate(classes):
        positive = y_true == i
        if positive.any() and (~positive).any():
            out["roc_auc"][c] = float(roc_auc_score(positive, probs[:, i]))
            fpr, tpr, _ = roc_curve(positive, probs[:, i])
            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 60)).astype(int))
            out["roc_curve"][c] = {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}
        else:
            out["roc_auc"][c] = None
    rel = reliability(y_true, probs)
    out["ece"] = rel.pop("ece")
    out["reliability"] = rel
    out["per_group"] = {}
    if groups is not None:
        for col in GROUP_COLUMNS:
            if col not in groups.columns:
                continue
            out["per_group"][col] = {}
            values = groups[col].fillna("unknown").astype(str).to_numpy()
            for value in sorted(set(values)):
                m = values == value
                g = _core_metrics(y_true[m], probs[m], classes)
                g["ece"] = reliability(y_true[m], probs[m])["ece"]
                g["label_counts"] = {c: int((y_true[m] == i).sum()) for i, c in enumerate(classes)}
                out["per_group"][col][value] = g
        if stats.GROUP_COLUMN in groups.columns and len(y_true):
            cis = stats.bootstrap_cis(stats.METRICS, y_true, probs, groups[stats.GROUP_COLUMN])
            out["ci95"] = stats.ci_lists(cis)
            out["ci95_method"] = ci_method(groups[stats.GROUP_COLUMN])
    return out


def ci_method(ids: pd.Series) -> dict[str, Any]:
    """How the card's intervals were drawn: resampling unit, number of groups, replicates, seed."""
    return {"bootstrap": "percentile, resampling patient groups with replacement", "group_column": stats.GROUP_COLUMN,
            "n_groups": int(stats.group_codes(ids, len(ids)).max()) + 1 if len(ids) else 0,
            "n_boot": stats.N_BOOT, "seed": settings.SEED, "level": 0.95}


def predict_files(model_name: str, files: Sequence[str],
                  on_image: Callable[[CXRImage], None] | None = None,
                  weights_dir: Path | None = None) -> tuple[np.ndarray, float]:
    """Calibrated probabilities for files through the app's own path; mean single-image latency (ms).

    `on_image` sees each decoded image (the probes keep a working copy of it, so a file is decoded
    once per evaluation: a 12-bit DICOM costs hundreds of milliseconds)."""
    clf = load_classifier(model_name, weights_dir)
    probs, times = [], []
    with torch.inference_mode():
        for f in tqdm(files, desc=f"evaluate {model_name}", mininterval=5):
            image = load_image(f)
            if on_image is not None:
                on_image(image)
            x = clf.to_input(image)
            t = time.perf_counter()
            logits = clf.model(x)
            times.append(time.perf_counter() - t)
            probs.append(calibrated_probs(logits[0], clf.temperature))
    return np.stack(probs), float(np.mean(times) * 1000.0)


def abstention_summary(y_true: np.ndarray, probs: np.ndarray, threshold: float,
                       age_groups: Sequence[Any] | None = None,
                       classes: Sequence[str] = settings.CLASSES) -> dict[str, Any]:
    """The app's abstention rule (classify.decide, without the quality gate) on these predictions:
    how many it answers and how accurate those are, and with the age-group scope rule on top when
    the data says each image's age group."""
    def run(groups: Sequence[str | None]) -> dict[str, Any]:
        decisions = [decide(p, threshold, None, g, classes) for p, g in zip(probs, groups)]
        answered = np.array([not d[1] for d in decisions])
        correct = np.array([d[0] for d in decisions]) == y_true
        return {"coverage": float(answered.mean()) if len(answered) else float("nan"),
                "accuracy_answered": float(correct[answered].mean()) if answered.any() else float("nan"),
                "n_answered": int(answered.sum())}

    out: dict[str, Any] = {"threshold": threshold, "quality_gate": "not applied", **run([None] * len(y_true))}
    if age_groups is not None:
        groups = [g if g in settings.AGE_GROUPS else None for g in age_groups]
        scoped = run(groups)
        conf_ok = probs.max(1) >= threshold
        # the scope rule alone (threshold 0: confidence never abstains), as decide applies it to these classes
        in_scope = np.array([not decide(p, 0.0, None, g, classes)[1] for p, g in zip(probs, groups)], dtype=bool)
        stopped = conf_ok & ~in_scope  # answered on confidence, stopped by the scope rule alone
        scoped["stopped_by_age_scope"] = int(stopped.sum())
        scoped["stopped_by_age_scope_wrong"] = int((stopped & (probs.argmax(1) != y_true)).sum())
        out["with_age_scope"] = scoped
    return out


def probe_files(model_name: str, files: Sequence[str], labels: np.ndarray,
                images: Sequence[np.ndarray] | None = None, weights_dir: Path | None = None) -> dict[str, Any]:
    """Context-only and acquisition-shift probes (cxr_core.probes) with the shipped lung segmenter's
    masks; the context-only probe is left out, saying why, when the segmenter is not available.
    `images`: the files' working copies (`probes.working_copy`) when the caller already decoded them."""
    from cxr_core import segment as lung_task
    from cxr_core.classify import probes

    clf = load_classifier(model_name, weights_dir)
    if images is None:
        images = [probes.working_copy(load_image(f).pixels) for f in tqdm(files, desc="decode for probes", mininterval=5)]
    try:
        seg = lung_task.load_segmenter()
        masks: list[np.ndarray] | None = [lung_task.segment(p, seg).mask for p in tqdm(images, desc="lung masks", mininterval=5)]
    except Exception as e:  # noqa: BLE001 - reported in the output, the shift probes still run
        masks, why = None, f"lung segmenter unavailable: {e}"
    from cxr_core.gate.quality import assess

    out = probes.run_probes(clf, images, labels, abstain_threshold(clf), masks,
                            gate=lambda p: assess(p).verdict != "fail")
    if masks is None:
        out["context_only_skipped"] = why
    return out


def evaluate(model_name: str, data: Path, split: str | None = "test", with_probes: bool = False,
             weights_dir: Path | None = None) -> dict[str, Any]:
    """Metrics (and with `with_probes` the probes) of `model_name`'s weights in `weights_dir` (default
    settings.WEIGHTS_DIR; e.g. a training run's `--out-dir` candidate before it ships)."""
    from cxr_core.data import class_index, folder_manifest, read_manifest

    data = Path(data)
    is_folder = data.is_dir()
    clf = load_classifier(model_name, weights_dir)
    classes = clf.classes  # the labels the model can name, in its output order
    df = folder_manifest(data, classes) if is_folder else read_manifest(data, classes)
    if not is_folder and split and "split" in df.columns and split != "all":
        df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise SystemExit(f"No images for split '{split}' in {data}")
    copies: list[np.ndarray] = []  # working copies for the probes, kept from the one decode
    keep = None
    if with_probes:
        from cxr_core.classify import probes

        def keep(image: CXRImage) -> None:
            copies.append(probes.working_copy(image.pixels))
    probs, latency = predict_files(model_name, df["file"].tolist(), on_image=keep, weights_dir=weights_dir)
    y = df["label"].map(class_index(classes)).to_numpy()
    out = compute_metrics(y, probs, df, classes)
    out["abstention"] = abstention_summary(y, probs, abstain_threshold(clf),
                                           df["age_group"].tolist() if "age_group" in df.columns else None, classes)
    out.update({"model": model_name, "data": str(data), "split": None if is_folder else split, "mean_latency_ms": latency})
    if weights_dir is not None:
        out["weights_dir"] = str(weights_dir)
    # which weights these figures describe: the pages compare it with the shipped file's hash
    out["weights_sha256"] = weights_sha256(weights_path(model_name, weights_dir))
    if with_probes:
        out["probes"] = probe_files(model_name, df["file"].tolist(), y, images=copies, weights_dir=weights_dir)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    ap.add_argument("--data", type=Path, default=settings.CXR3_MANIFEST, help="manifest CSV or folder with class sub-folders")
    ap.add_argument("--split", default="test", help="split to evaluate (manifest only; a folder is used whole); 'all' for every row")
    ap.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    ap.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    ap.add_argument("--weights-dir", type=Path, default=None,
                    help="folder holding <model>.pt and .json (default weights/), e.g. a candidate from train --out-dir")
    ap.add_argument("--probes", action="store_true",
                    help="also run the context-only probe and the acquisition-shift stress test (cxr_core.probes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.weights_dir is not None and not (args.weights_dir / f"{args.model}.pt").is_file():
        ap.error(f"--weights-dir {args.weights_dir}: no {args.model}.pt there")
    metrics = evaluate(args.model, args.data, args.split, with_probes=args.probes, weights_dir=args.weights_dir)
    text = json.dumps(metrics, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(
        f"{args.model}: n={metrics['n']} accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} "
        f"ece={metrics['ece']:.4f} latency={metrics['mean_latency_ms']:.1f} ms"
    )
    ab = metrics["abstention"]
    for label, a in (("confidence rule", ab), ("+ age-group scope", ab.get("with_age_scope"))):
        if a:
            print(f"  {label}: answers {a['coverage']:.1%} ({a['n_answered']}/{metrics['n']}), "
                  f"accuracy on those {a['accuracy_answered']:.4f}")
    if "probes" in metrics:
        pr = metrics["probes"]
        if "context_only" in pr:
            c = pr["context_only"]
            print(f"  context only (lungs greyed out): accuracy {c['accuracy']:.3f} (chance {pr['chance_accuracy']:.3f}), "
                  f"answers {c['coverage']:.1%}")
        for name, sh in pr["shifts"].items():
            print(f"  shift {name}: accuracy {sh['accuracy']:.3f} (drop {sh['accuracy_drop']:+.3f}), answers {sh['coverage']:.1%}")


if __name__ == "__main__":
    main()
