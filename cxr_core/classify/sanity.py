"""Sanity checks of the class-activation maps, after Adebayo et al. (2018), "Sanity Checks for Saliency Maps".

``python -m cxr_core classify sanity --n 30 --model NAME`` (old spelling: ``python -m cxr_core.explain
sanity ...``) writes weights/explain_sanity_NAME.json (``--method M`` other than Grad-CAM:
explain_sanity_NAME_M.json):
(a) the Spearman rank correlation between heatmaps of the trained network and the same
architecture with random weights (low = the map depends on what the model learned) and
(b) a deletion curve: deleting the most salient pixels first should lower the predicted-class
probability faster than deleting random pixels (smaller area under the curve), and
(c) the same deletion with ROAD's noisy linear imputation (Rong et al. 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods"; pytorch-grad-cam's `NoisyLinearImputer`).

Why (c): in (b) removed pixels take the values of a heavily blurred copy, so a random scatter of
removed pixels is salt-and-pepper noise, and a model that noise moves (the shift probe measures it)
loses confidence from the artefact rather than from the lost evidence. ROAD fills each removed pixel
from its neighbours, so scattered removals vanish while removed regions lose their content: salient
vs random then compares the evidence removed, not the kind of artefact. Both are reported.

Kept apart from `explain` because the app only needs the maps; this study loads data and other models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from cxr_core import settings
from cxr_core.classify.explain import (
    DEFAULT_METHOD,
    METHODS,
    cam_at_input,
    explain,
    overlay,
    save_overlay,
)
from cxr_core.data import sample_balanced
from cxr_core.models import Classifier, load_classifier
from cxr_core.preprocess import standardise, to_model_tensor
from cxr_core.provenance import weights_sha256


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranking
    return float(spearmanr(a, b).statistic)


def randomised_copy(clf: Classifier, seed: int = settings.SEED) -> Classifier:
    """Same architecture and input handling, freshly initialised weights (model randomisation test)."""
    from cxr_core.models import build_model

    torch.manual_seed(seed)
    net, _ = build_model(clf.name, input_size=clf.input_size, imagenet=False, num_classes=len(clf.classes))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Classifier(name=clf.name, spec=clf.spec, model=net, input_size=clf.input_size, temperature=1.0,
                      classes=clf.classes)


def deletion_curve(
    clf: Classifier,
    std_image: np.ndarray,
    saliency: np.ndarray,
    target_index: int,
    steps: int = 20,
    rng: np.random.Generator | None = None,
    blur_sigma: float | None = None,
    patch: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deletion curves on one standardised (S, S) uint8 input.

    Pixels are replaced by a heavily blurred copy of the image, most salient first, and (for the
    control) in random order. Returns (fractions, p_salient, p_random): the calibrated
    probability of `target_index` after deleting each fraction of pixels. With `patch` (pixels),
    a second control deletes whole patch x patch squares in random order and is returned as a
    4th array: scattered single pixels are an easier, out-of-distribution perturbation than the
    contiguous blobs a smooth CAM deletes, so random patches are the like-for-like control.
    """
    rng = rng or np.random.default_rng(settings.SEED)
    s = std_image.shape[0]
    sigma = blur_sigma if blur_sigma is not None else s / 16.0
    blurred = cv2.GaussianBlur(std_image, (0, 0), sigmaX=sigma)
    n = std_image.size
    # Ties (flat regions of the upsampled map, zeros after ReLU) are broken at random.
    order_sal = np.lexsort((rng.random(n), -saliency.ravel()))
    order_rnd = rng.permutation(n)
    order_patch = None
    if patch:
        s_p = -(-s // patch)
        patch_rank = rng.permutation(s_p * s_p).reshape(s_p, s_p)
        per_pixel = np.kron(patch_rank, np.ones((patch, patch)))[:s, : std_image.shape[1]]
        order_patch = np.lexsort((rng.random(n), per_pixel.ravel()))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * n).astype(int)

    def batch(order: np.ndarray) -> np.ndarray:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        rank = rank.reshape(std_image.shape)
        return np.stack([np.where(rank < k, blurred, std_image) for k in counts])

    orders = [order_sal, order_rnd] + ([order_patch] if order_patch is not None else [])
    both = np.concatenate([batch(o) for o in orders])
    with torch.inference_mode():
        logits = clf.model(to_model_tensor(both, clf.family))
        probs = torch.softmax(logits.float() / float(clf.temperature), dim=-1)[:, target_index].numpy()
    k = steps + 1
    if order_patch is not None:
        return fractions, probs[:k], probs[k : 2 * k], probs[2 * k :]
    return fractions, probs[:k], probs[k : 2 * k]


ROAD_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(10))  # 0 .. 0.9, ROAD's percentiles 10..90 and the clean film
ROAD_NOISE = 0.01  # the imputer's default noise (intensities in [0, 1])


def road_impute(image: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE) -> np.ndarray:
    """(S, S) float image in [0, 1] with the `removed` pixels re-filled by ROAD's noisy linear
    imputation (each one the weighted mean of its 8 neighbours, solved jointly, plus noise)."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    if not removed.any():
        return image.astype(np.float32)
    keep = torch.from_numpy((~removed).astype(np.float32))
    filled = NoisyLinearImputer(noise=noise)(torch.from_numpy(image.astype(np.float32))[None], keep)[0]
    return filled.clamp_(0.0, 1.0).numpy()


def road_curve(
    clf: Classifier,
    std_image: np.ndarray,
    saliency: np.ndarray,
    target_index: int,
    rng: np.random.Generator | None = None,
    fractions: Sequence[float] = ROAD_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROAD deletion on one standardised (S, S) uint8 input: (fractions, p_salient, p_random), the
    calibrated probability of `target_index` after imputing each fraction of pixels, most salient
    first and in random order. Ties in the map are broken at random, as in `deletion_curve`."""
    rng = rng or np.random.default_rng(settings.SEED)
    n = std_image.size
    image = std_image.astype(np.float32) / 255.0
    orders = (np.lexsort((rng.random(n), -saliency.ravel())), rng.permutation(n))
    fr = np.asarray(fractions, dtype=float)
    films = []
    for order in orders:
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        rank = rank.reshape(std_image.shape)
        films += [road_impute(image, rank < round(f * n)) for f in fr]
    with torch.inference_mode():
        logits = clf.model(to_model_tensor(torch.from_numpy(np.stack(films))[:, None], clf.family))
        probs = torch.softmax(logits.float() / float(clf.temperature), dim=-1)[:, target_index].numpy()
    return fr, probs[: len(fr)], probs[len(fr):]


def _auc(fractions: np.ndarray, values: np.ndarray) -> float:
    return float(np.trapezoid(values, fractions))


def run_sanity(
    n: int = 30,
    model: str = settings.DEFAULT_CLASSIFIER,
    method: str = DEFAULT_METHOD,
    steps: int = 20,
    seed: int = settings.SEED,
    clf: Classifier | None = None,
    progress: bool = False,
    layer: str | None = None,
    road: bool = True,
) -> dict[str, Any]:
    """Model-randomisation (Spearman) and deletion-curve checks on `n` real cxr3 test images.

    `layer` (a module name such as "features.22") checks another CAM layer than the model's default,
    to compare layers on the same images before changing `cam_layer`. `road=False` skips the ROAD
    deletion (a sparse solve per step: about 80 s per film at 256 px on a busy two-core machine)."""
    from cxr_core.io import load_image

    t0 = time.time()
    clf = clf or load_classifier(model)
    rand = randomised_copy(clf, seed)
    target, target_rand = (_named_layer(c, layer) for c in (clf, rand)) if layer else (None, None)
    rng = np.random.default_rng(seed)
    images = sample_balanced(n, seed)
    rhos, auc_sal, auc_rnd, curves_sal, curves_rnd, rows = [], [], [], [], [], []
    auc_patch, curves_patch = [], []
    road_sal, road_rnd, road_curves_sal, road_curves_rnd = [], [], [], []
    road_fr = None
    torch.manual_seed(seed)  # the imputer's noise
    patch = max(4, clf.input_size // 16)
    fractions = None
    for k, (path, label) in enumerate(images):
        img = load_image(path)
        std = standardise(img.pixels, clf.input_size)
        x = to_model_tensor(std[None], clf.family)
        maps, logits = cam_at_input(clf, x, None, method, target)
        pred = int(np.argmax(logits[0]))
        maps_rand, _ = cam_at_input(rand, x, pred, method, target_rand)  # same class, random weights
        rho = _spearman(maps[0], maps_rand[0])
        fractions, p_sal, p_rnd, p_patch = deletion_curve(clf, std, maps[0], pred, steps, rng, patch=patch)
        a_s, a_r, a_p = _auc(fractions, p_sal), _auc(fractions, p_rnd), _auc(fractions, p_patch)
        auc_patch.append(a_p)
        curves_patch.append(p_patch)
        road_row = {}
        if road:
            road_fr, r_sal, r_rnd = road_curve(clf, std, maps[0], pred, rng)
            road_sal.append(_auc(road_fr, r_sal))
            road_rnd.append(_auc(road_fr, r_rnd))
            road_curves_sal.append(r_sal)
            road_curves_rnd.append(r_rnd)
            road_row = {"road_auc_salient": round(road_sal[-1], 4), "road_auc_random": round(road_rnd[-1], 4)}
        rhos.append(rho)
        auc_sal.append(a_s)
        auc_rnd.append(a_r)
        curves_sal.append(p_sal)
        curves_rnd.append(p_rnd)
        rows.append(
            {
                "path": str(path.relative_to(settings.CXR3_DIR)) if path.is_relative_to(settings.CXR3_DIR) else str(path),
                "label": label,
                "predicted": clf.classes[pred],
                "spearman_trained_vs_random": None if np.isnan(rho) else round(rho, 4),
                "deletion_auc_salient": round(a_s, 4),
                "deletion_auc_random": round(a_r, 4),
                "deletion_auc_random_patches": round(a_p, 4),
                **road_row,
            }
        )
        if progress:
            road_text = f" ROAD salient={road_sal[-1]:.3f} random={road_rnd[-1]:.3f}" if road else ""
            print(f"[{k + 1}/{len(images)}] rho={rho:.3f} auc salient={a_s:.3f} random={a_r:.3f} "
                  f"random patches={a_p:.3f}{road_text}", file=sys.stderr)
    rho_arr = np.array(rhos, dtype=float)
    finite = rho_arr[np.isfinite(rho_arr)]
    sal, rnd, rpatch = np.array(auc_sal), np.array(auc_rnd), np.array(auc_patch)
    road_result: dict[str, Any] = {}
    if road and road_sal:
        rs, rr = np.array(road_sal), np.array(road_rnd)
        road_result = {"road": {
            "description": "ROAD (Rong et al. 2022): the same deletion, but removed pixels are re-filled by noisy "
            "linear imputation from their neighbours (pytorch-grad-cam NoisyLinearImputer, noise "
            f"{ROAD_NOISE}), so scattered random removals leave no artefact; most salient first vs random "
            "pixel order, AUC over the removed fraction 0..0.9, lower = faster drop.",
            "auc_salient_mean": float(rs.mean()),
            "auc_random_mean": float(rr.mean()),
            "auc_difference_mean": float((rr - rs).mean()),
            "images_salient_faster": int((rs < rr).sum()),
            "fractions": [float(f) for f in road_fr] if road_fr is not None else [],
            "curve_salient_mean": [round(float(v), 4) for v in np.mean(road_curves_sal, axis=0)],
            "curve_random_mean": [round(float(v), 4) for v in np.mean(road_curves_rnd, axis=0)],
        }}
    passed = {
        "randomisation_spearman_below_0.5": bool(finite.size and finite.mean() < 0.5),
        "deletion_salient_below_random": bool(sal.mean() < rnd.mean()),
    }
    if road_result:
        passed["road_salient_below_random"] = bool(road_result["road"]["auc_salient_mean"] < road_result["road"]["auc_random_mean"])
    return {
        "model": clf.name,
        "method": method,
        "cam_layer": _layer_name(clf, target),
        "cam_layer_is_default": target is None or target is clf.cam_layer,
        "n_images": len(images),
        "split": "test",
        "seed": seed,
        "randomisation": {
            "description": "Spearman rank correlation between the trained model's heatmap and the heatmap of the "
            "same architecture with freshly initialised weights (same input, same target class). "
            "Adebayo et al. 2018: a faithful method should give low correlation.",
            "spearman_mean": float(finite.mean()) if finite.size else float("nan"),
            "spearman_median": float(np.median(finite)) if finite.size else float("nan"),
            "spearman_abs_mean": float(np.abs(finite).mean()) if finite.size else float("nan"),
            "spearman_std": float(finite.std()) if finite.size else float("nan"),
            "n_constant_maps": int((~np.isfinite(rho_arr)).sum()),
        },
        "deletion": {
            "description": "Predicted-class probability while pixels are replaced by a Gaussian-blurred copy "
            "(sigma = input/16), most salient first vs random pixel order (and vs random order of "
            "patch_px squares); AUC over the deleted fraction 0..1, lower = faster drop.",
            "steps": steps,
            "auc_salient_mean": float(sal.mean()),
            "auc_random_mean": float(rnd.mean()),
            "auc_difference_mean": float((rnd - sal).mean()),
            "images_salient_faster": int((sal < rnd).sum()),
            "patch_px": patch,
            "auc_random_patches_mean": float(rpatch.mean()),
            "images_salient_faster_than_patches": int((sal < rpatch).sum()),
            "fractions": [round(float(f), 4) for f in fractions] if fractions is not None else [],
            "curve_salient_mean": [round(float(v), 4) for v in np.mean(curves_sal, axis=0)],
            "curve_random_mean": [round(float(v), 4) for v in np.mean(curves_rnd, axis=0)],
            "curve_random_patches_mean": [round(float(v), 4) for v in np.mean(curves_patch, axis=0)],
        },
        **road_result,
        "passed": passed,
        "also": {"deletion_salient_below_random_patches": bool(sal.mean() < rpatch.mean())},
        "images": rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def classifier_from_checkpoint(name: str, path: str | Path, input_size: int | None = None) -> Classifier:
    """A frozen Classifier from a training checkpoint (`cache/runs/<run>/best.pt`: a bare state_dict)
    or an exported `weights/<name>.pt`, for checking heatmaps before the weights are exported."""
    from cxr_core.models import SPECS, build_model, checkpoint_classes, load_checkpoint

    ckpt = load_checkpoint(Path(path))
    classes = checkpoint_classes(ckpt if isinstance(ckpt, dict) else {}, None)
    state = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
    size = int(input_size or (ckpt.get("input_size") if isinstance(ckpt, dict) else 0) or SPECS[name].default_size)
    net, _ = build_model(name, input_size=size, imagenet=False, num_classes=len(classes))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    temperature = float(ckpt.get("temperature", 1.0)) if isinstance(ckpt, dict) else 1.0
    return Classifier(name=name, spec=SPECS[name], model=net, input_size=size, temperature=temperature,
                      classes=classes)


def _named_layer(clf: Classifier, name: str) -> nn.Module:
    modules = dict(clf.model.named_modules())
    if name not in modules:
        spatial = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        raise ValueError(f"{clf.name} has no layer '{name}'; conv/BN layers: {', '.join(spatial)}")
    return modules[name]


def _layer_name(clf: Classifier, layer: nn.Module | None = None) -> str:
    layer = layer if layer is not None else clf.cam_layer
    for name, mod in clf.model.named_modules():
        if mod is layer:
            return f"{name} ({type(mod).__name__})"
    return type(layer).__name__


def sanity_path(model: str, method: str | None = None) -> Path:
    """weights/explain_sanity_MODEL.json for the default method, ..._MODEL_METHOD.json for another one."""
    if method is None or method == DEFAULT_METHOD:
        return settings.WEIGHTS_DIR / f"explain_sanity_{model}.json"
    return settings.WEIGHTS_DIR / f"explain_sanity_{model}_{method}.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def sanity_result(model: str, method: str | None = None) -> dict[str, Any] | None:
    """The last sanity run for this model (written by `python -m cxr_core.explain sanity`), if any.

    With `method`, only a run of that method counts (its file's `method` field must say so): a
    Grad-CAM check says nothing about Eigen-CAM maps, so a method never checked gives None.
    """
    if method is None:
        return _read_json(sanity_path(model))
    for path in dict.fromkeys((sanity_path(model, method), sanity_path(model))):
        data = _read_json(path)
        if data is not None and data.get("method") == method:
            return data
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr_core.explain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    san = sub.add_parser("sanity", help="model-randomisation and deletion-curve sanity checks")
    san.add_argument("--n", type=int, default=30, help="number of cxr3 test images (class-balanced)")
    san.add_argument("--out", type=Path, default=None, help="default: weights/explain_sanity_<model>.json")
    san.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    san.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    san.add_argument("--steps", type=int, default=20)
    san.add_argument("--seed", type=int, default=settings.SEED)
    san.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    san.add_argument("--checkpoint", type=Path, default=None,
                     help="check a training checkpoint (e.g. cache/runs/vbreathnet-128px/best.pt) instead of weights/<model>.pt")
    san.add_argument("--size", type=int, default=None, help="input size of --checkpoint (if it does not record it)")
    san.add_argument("--layer", default=None, help="CAM layer by module name (e.g. features.22); default: the model's cam_layer")
    san.add_argument("--no-road", dest="road", action="store_false",
                     help="skip the ROAD deletion (noisy linear imputation; about a minute per film at 256 px)")
    img = sub.add_parser("image", help="write a heatmap overlay for one image")
    img.add_argument("image", type=Path)
    img.add_argument("--out", type=Path, required=True)
    img.add_argument("--model", default=settings.DEFAULT_CLASSIFIER, choices=settings.CLASSIFIERS)
    img.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    img.add_argument("--target", default=None, help="class name (default: predicted class)")
    args = parser.parse_args(argv)

    from cxr_core.io import ImageLoadError, load_image
    from cxr_core.models import ModelUnavailableError

    try:
        if args.cmd == "sanity":
            torch.set_num_threads(max(1, args.threads))
            clf = classifier_from_checkpoint(args.model, args.checkpoint, args.size) if args.checkpoint else None
            result = run_sanity(args.n, args.model, args.method, args.steps, args.seed, clf=clf, progress=True,
                                layer=args.layer, road=args.road)
            src = args.checkpoint or (settings.WEIGHTS_DIR / f"{args.model}.pt")
            result["weights_source"] = str(src)
            result["weights_sha256"] = weights_sha256(src)  # the pages compare it with the shipped file
            result["weights_modified"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(Path(src).stat().st_mtime))
            result["input_size"] = (clf or load_classifier(args.model)).input_size
            args.out = args.out or sanity_path(args.model, args.method)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            r, d = result["randomisation"], result["deletion"]
            print(
                f"{result['model']} {result['method']} on {result['n_images']} test images: "
                f"Spearman(trained, random) mean {r['spearman_mean']:.3f}; deletion AUC salient "
                f"{d['auc_salient_mean']:.3f} vs random pixels {d['auc_random_mean']:.3f} / random "
                f"{d['patch_px']}px patches {d['auc_random_patches_mean']:.3f}"
                + (f"; ROAD salient {result['road']['auc_salient_mean']:.3f} vs random {result['road']['auc_random_mean']:.3f}"
                   if "road" in result else "") + f" -> {args.out}"
            )
            return 0 if all(result["passed"].values()) else 1
        image = load_image(args.image)
        heat = explain(args.model, image, args.target, args.method)
        save_overlay(args.out, overlay(image, heat))
        print(json.dumps(heat.to_dict()))
        return 0
    except (ModelUnavailableError, FileNotFoundError, ImageLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
