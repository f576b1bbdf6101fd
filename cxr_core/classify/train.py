"""Train a classifier on the cxr3 split (or your own folder of classes) and write weights/<model>.pt + a model card.

    python -m cxr_core.train --model vbreathnet --epochs 12
    python -m cxr_core.train --model mobilenet_v2            # frozen ImageNet backbone, head only
    python -m cxr_core.train --model densenet121 --size 128  # from scratch (no offline ImageNet weights)
    python -m cxr_core classify train --model vbreathnet --data FOLDER --out-dir runs/mine  # your classes

`--data` is the cxr3 manifest by default (alias `--manifest`). A FOLDER with one sub-folder of images
per class trains on those classes instead (sorted names = output order): the films are split
train/val/test (70/15/15, stratified by class, seeded) into `<out-dir>/<model>.split.csv`, which
`--data` accepts back to reproduce the run; the card and the checkpoint record the classes, so
`load_classifier`, the app, the reports and the batch tables follow them (docs/architecture.md).

Two modes, picked by whether ImageNet weights exist for the backbone:
- "head": the backbone is frozen (as in the paper), its pooled features are computed once
  (clean + augmented views of the train split) and only the small head is trained.
- "full": the whole network trains end to end with augmentation (V-BreathNet, and baselines
  without pretrained weights).
Runs resume from cache/runs/<model>/last.pt after an interruption (--resume, on by default).
The best epoch by validation accuracy is kept; temperature scaling and the abstention
threshold are fitted on the validation split; test metrics are computed once, at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from cxr_core import cfg, settings, stats
from cxr_core.data import (
    SPLIT_FRACTIONS,
    CachedSplit,
    build_cache,
    load_split,
    manifest_classes,
    read_manifest,
    split_folder,
)
from cxr_core.timing import time_each
from cxr_core.provenance import code_version, cpu_model, sha256_file
from cxr_core.classify.val import compute_metrics, reliability
from cxr_core.models import SPECS, build_model, checkpoint_classes, count_params, freeze
from cxr_core.preprocess import AUGMENTATION_TEXT, AUGMENTATIONS, to_model_tensor, train_augmentation

FRONTAL_ONLY = "Frontal (PA/AP) radiographs only; lateral views, CT and other body parts are out of scope."
KNOWN_LIMITS = [
    "Trained on cxr3: COVID-19 images are all adult (COVID-19 Radiography Database), viral pneumonia is "
    "all paediatric (Kermany, age 1-5), normals are half adult and half paediatric. Source and age "
    "correlate with the label, so the model can partly recognise hospital or age instead of disease.",
    "Do not use for adult viral pneumonia: there is none in the training data.",
    FRONTAL_ONLY,
    "Not validated prospectively or on any external hospital's data.",
]
# A model retrained on a hospital's own folder (`--data FOLDER`): what this tool can say about it.
FOLDER_LIMITS = [
    "Trained on the images of one folder of classes; whatever else differs between those sub-folders (source, "
    "scanner, age, labelling) the model may have learned instead of the disease.",
    "The cxr3 age-group and scope rules do not apply: nothing records whom each class was learned from.",
    FRONTAL_ONLY,
    "Not validated prospectively or on any data outside its own test split.",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class AugmentedImages(Dataset):
    """uint8 cache -> augmented model tensors, one sample at a time (augmentation is per image)."""

    def __init__(self, split: CachedSplit, family: str, augment: bool, kind: str = "standard") -> None:
        self.split, self.family = split, family
        self.augment = train_augmentation(split.images.shape[-1], kind) if augment else None

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.split.images[i]).float().div_(255.0)[None]
        if self.augment is not None:
            x = self.augment(x).clamp_(0.0, 1.0)
        return x, int(self.split.labels[i])


def balanced_sampler(labels: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Equal expected count per class each epoch (train split only)."""
    counts = np.bincount(labels).astype(float)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels), replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )


def bf16_native() -> bool:
    """bf16 autocast pays only where oneDNN has bf16 kernels (AVX512-BF16/AMX): on an AVX2-only CPU it
    was measured 4x slower than fp32 (14 s vs 3.5 s per V-BreathNet training step of 32 at 128 px)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PRECISIONS = ("fp32", "fp32-cl", "bf16-cl")  # training arithmetic; scoring and shipped weights are always fp32


def precision_context(precision: str) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16") else contextlib.nullcontext()


def cpu_autocast() -> contextlib.AbstractContextManager[Any]:
    return precision_context("bf16-cl" if bf16_native() else "fp32")


def memory_format(precision: str) -> torch.memory_format:
    return torch.channels_last if precision.endswith("-cl") else torch.contiguous_format


def probe_precision(build: Any, size: int, batch: int = 16, seconds: float = 20.0,
                    num_classes: int = len(settings.CLASSES)) -> dict[str, Any]:
    """Time a few training steps of a throw-away copy of the model in each precision and return the
    fastest: bf16 + channels_last was 3.4x fp32 on a Xeon with AMX and 4x slower on an AVX2-only CPU,
    so the choice is measured on the machine, never assumed. RNG state is restored afterwards, so the
    probe does not change the run it precedes."""
    candidates = [p for p in PRECISIONS if not p.startswith("bf16") or bf16_native()]
    rates: dict[str, float] = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = torch.rand(batch, 3, size, size)
        y = torch.randint(0, num_classes, (batch,))
        per_mode = seconds / len(candidates)
        for precision in candidates:
            model = build().to(memory_format=memory_format(precision)).train()
            opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
            xb = x.contiguous(memory_format=memory_format(precision))

            def step() -> None:
                with precision_context(precision):
                    loss = nn.functional.cross_entropy(model(xb).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step()  # warm-up: oneDNN picks its kernels on the first call
            t0, n = time.perf_counter(), 0
            while n == 0 or time.perf_counter() - t0 < per_mode / 2:
                step()
                n += 1
            rates[precision] = n * batch / (time.perf_counter() - t0)
    best = max(rates, key=rates.__getitem__)
    return {"precision": best, "img_per_s": {k: round(v, 2) for k, v in rates.items()}, "probe_batch": batch}


PAPER_LR_STEP = 5  # the paper halves the learning rate every 5 epochs
OPTIMIZERS: dict[str, Any] = {  # ModelSpec.optimizer -> (parameters, lr) -> optimiser
    "RMSprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),  # the paper's V-BreathNet
    "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr, weight_decay=1e-4),
}


SCHEDULES = ("step", "cosine")  # cfg/classify.yaml `schedule`


def lr_schedule(epoch: int, base_lr: float, step: int = PAPER_LR_STEP, schedule: str = "step",
                epochs: int | None = None) -> float:
    """The learning rate of `epoch` (0-based), never below 1e-6.

    "step" (the paper): halve every `step` epochs; longer runs need a longer step or they idle at 1e-6.
    "cosine": from `base_lr` down to 0 over `epochs` (half a cosine), used for a second stage that
    starts from trained weights (`init_from`): no restart at a high rate that would undo them."""
    if schedule == "cosine":
        if not epochs:
            raise ValueError("the cosine schedule needs the run's number of epochs")
        return max(base_lr * 0.5 * (1.0 + float(np.cos(np.pi * epoch / epochs))), 1e-6)
    if schedule != "step":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    return max(base_lr * 0.5 ** (epoch // step), 1e-6)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, family: str, batch: int = 64, fast: bool = True) -> torch.Tensor:
    """Logits for a cached split; `fast` allows bf16 (per-epoch validation), final scores use fp32."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_model_tensor(images[i : i + batch], family).contiguous(memory_format=torch.channels_last)
        with cpu_autocast() if fast else contextlib.nullcontext():
            out.append(model(x).float())
    return torch.cat(out) if out else torch.zeros(0, len(settings.CLASSES))


def fit_temperature(logits: torch.Tensor, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017) on validation logits, T in [0.05, 20].

    The validation NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta minus a
    linear term), so a bounded scalar search finds its minimum; LBFGS on log T, used before, could
    step to NaN on a small or badly separated validation set (seen on 24 images)."""
    from scipy.optimize import minimize_scalar

    z = logits.detach().double().numpy()
    y = np.asarray(labels, dtype=int)

    def nll(beta: float) -> float:
        s = beta * z
        m = s.max(1, keepdims=True)
        return float(np.mean(m[:, 0] + np.log(np.exp(s - m).sum(1)) - s[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(1 / 20.0, 1 / 0.05), method="bounded", options={"xatol": 1e-6})
    return float(np.clip(1.0 / res.x, 0.05, 20.0))


def choose_abstain_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float = 0.98) -> dict[str, float]:
    """Lowest confidence threshold whose answered validation cases reach the target accuracy."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    for t in np.round(np.arange(0.40, 0.96, 0.01), 2):
        answered = conf >= t
        if answered.sum() and correct[answered].mean() >= target_accuracy:
            break
    answered = conf >= t
    return {
        "abstain_threshold": float(max(t, settings.ABSTAIN_CONFIDENCE)),
        "target_accuracy": target_accuracy,
        "val_coverage_at_threshold": float(answered.mean()),
        "val_accuracy_answered": float(correct[answered].mean()) if answered.any() else float("nan"),
    }


class Run:
    """State of one training run on disk, so an interrupted run continues where it stopped."""

    def __init__(self, name: str, state_dir: Path | None = None) -> None:
        self.dir = state_dir if state_dir is not None else settings.CACHE_DIR / "runs" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.last = self.dir / "last.pt"
        self.best = self.dir / "best.pt"
        self.log = self.dir / "log.txt"

    def write_log(self, line: str) -> None:
        with self.log.open("a") as fh:
            fh.write(f"{dt.datetime.now().isoformat(timespec='seconds')} {line}\n")


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename: a run killed mid-save keeps its previous state intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class BudgetStop(Exception):
    """Raised when --budget-min ends a segment: the state is saved and the run continues next time."""


def classes_tag(classes: Sequence[str]) -> str:
    """'' for cxr3's classes, else '-<n>cls-<8 hex>': a run on other classes never resumes a cxr3 run's
    state (or another folder's), whose output layer has another width."""
    if tuple(classes) == settings.CLASSES:
        return ""
    import hashlib

    return f"-{len(classes)}cls-{hashlib.sha256(' '.join(classes).encode()).hexdigest()[:8]}"


def train_full(model: nn.Module, name: str, train: CachedSplit, val: CachedSplit, args: argparse.Namespace) -> dict[str, Any]:
    family = SPECS[name].family
    run = Run(f"{name}-{train.images.shape[-1]}px{'-lungcrop' if args.lung_crop else ''}"
              f"{f'-lrstep{args.lr_step}' if args.lr_step != PAPER_LR_STEP else ''}"
              f"{f'-ema{args.ema}' if args.ema else ''}{f'-{args.schedule}' if args.schedule != 'step' else ''}"
              f"{f'-{args.augment}' if args.augment != 'standard' else ''}{'-init' if args.init_from else ''}"
              f"{classes_tag(args.classes)}", args.state_dir)
    segment_start = time.time()
    size = train.images.shape[-1]
    if args.precision == "auto":
        n = len(args.classes)
        probe = probe_precision(lambda: build_model(name, input_size=size, imagenet=False, num_classes=n)[0], size,
                                num_classes=n)
    else:
        probe = {"precision": args.precision, "img_per_s": {}, "probe_batch": 0}
    precision = probe["precision"]
    run.write_log(f"precision {precision} (probe img/s {probe['img_per_s']})")
    print(f"[train] precision {precision}; probe img/s {probe['img_per_s']}", file=sys.stderr)
    fmt = memory_format(precision)
    model = model.to(memory_format=fmt)
    # Validation accuracy swings by up to 30 points between epochs (BatchNorm after ReLU, RMSprop), so
    # picking the best epoch on it is partly picking noise; an EMA of the weights (and BN buffers) is
    # the smoother model to evaluate and keep.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    scored = ema.module if ema is not None else model
    opt = OPTIMIZERS[SPECS[name].optimizer](model.parameters(), args.lr)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_acc": -1.0, "seconds": 0.0, "size": size, "segments": []}
    if not args.resume and run.dir.exists():
        for f in (run.last, run.best):
            f.unlink(missing_ok=True)
    if args.init_from and not (args.resume and run.last.exists()):
        # a second stage: start from trained weights (fresh optimiser), not from a random initialisation
        init = torch.load(args.init_from, map_location="cpu", weights_only=True)
        if int(init.get("input_size", size)) != size:
            raise SystemExit(f"{args.init_from} is a model at {init['input_size']} px, not {size} px")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in init["state_dict"].items()})
        if ema is not None:  # the average starts from the same weights
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
            scored = ema.module
        # the checksum of the file as it was when the run started (a later rescore may rewrite it)
        state["init_from"] = {"weights": str(args.init_from), "sha256": sha256_file(args.init_from)}
        run.write_log(f"initialised from {args.init_from} (sha256 {state['init_from']['sha256'][:12]})")
    if args.resume and run.last.exists():
        ckpt = torch.load(run.last, map_location="cpu", weights_only=True)
        if ckpt["state"].get("size", size) != size:
            raise SystemExit(f"{run.last} is a run at another input size; pass --no-resume or delete {run.dir}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        state = ckpt["state"]
        state.setdefault("segments", [])
        run.write_log(f"resumed at epoch {state['epoch']}")
    segment = {"date": dt.date.today().isoformat(), "cpu": cpu_model() or platform.machine(), "threads": torch.get_num_threads(),
               "precision": precision, "probe_img_per_s": probe["img_per_s"],
               "epoch_from": state["epoch"], "epoch_to": state["epoch"], "minutes": 0.0}
    state["segments"].append(segment)
    loader = DataLoader(
        AugmentedImages(train, family, augment=True, kind=args.augment),
        batch_size=args.batch,
        sampler=balanced_sampler(train.labels, args.seed + state["epoch"]),
        num_workers=0,
    )
    loss_fn = nn.CrossEntropyLoss()
    epoch_seconds: list[float] = []
    for epoch in range(state["epoch"], args.epochs):
        if args.budget_min is not None:
            # Stop at an epoch boundary when the next epoch (as long as the slowest so far in this
            # segment) would not fit: the saved state is then exactly that of an uninterrupted run.
            used = time.time() - segment_start
            if epoch_seconds and used + max(epoch_seconds) > args.budget_min * 60 or used > args.budget_min * 60:
                run.write_log(f"budget of {args.budget_min} min reached after epoch {epoch}")
                raise BudgetStop(f"stopped at the {args.budget_min}-minute budget after epoch {epoch}/{args.epochs}; "
                                 f"state in {run.dir}")
        torch.manual_seed(args.seed + epoch)
        loader.sampler.generator.manual_seed(args.seed + epoch)  # type: ignore[union-attr]
        lr = lr_schedule(epoch, args.lr, args.lr_step, args.schedule, args.epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        t0, seen, correct, total_loss = time.time(), 0, 0, 0.0
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{args.epochs}", mininterval=10)
        for x, y in bar:
            x = to_model_tensor(x, family).contiguous(memory_format=fmt)
            with precision_context(precision):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            total_loss += float(loss.detach()) * len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        val_logits = predict_logits(scored, val.images, family, fast=precision.startswith("bf16"))
        val_loss = float(loss_fn(val_logits, torch.from_numpy(val.labels.copy())))
        val_acc = float((val_logits.argmax(1).numpy() == val.labels).mean())
        state["seconds"] += time.time() - t0
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": total_loss / seen, "train_acc": correct / seen,
             "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": time.time() - t0}
        )
        run.write_log(json.dumps(state["history"][-1]))
        if val_acc > state["best_acc"]:
            state["best_acc"] = val_acc
            state["best_epoch"] = epoch + 1
            save_atomic(scored.state_dict(), run.best)
        state["epoch"] = epoch + 1
        epoch_seconds.append(time.time() - t0)
        segment.update(epoch_to=epoch + 1, minutes=round((time.time() - segment_start) / 60, 2))
        # no RNG state to keep: every epoch reseeds torch and the sampler from (seed + epoch)
        last = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}
        save_atomic(last | ({"ema": ema.state_dict()} if ema is not None else {}), run.last)
    model.load_state_dict(torch.load(run.best, map_location="cpu", weights_only=True))
    model.eval()
    return state


def extract_features(model: nn.Module, split: CachedSplit, family: str, views: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Pooled frozen-backbone features: one clean view plus `views - 1` augmented ones."""
    model.eval()
    aug = train_augmentation(split.images.shape[-1])
    torch.manual_seed(seed)
    feats, labels = [], []
    with torch.inference_mode():
        for v in range(views):
            for i in tqdm(range(0, len(split.labels), 64), desc=f"features view {v + 1}/{views}", mininterval=10):
                x = torch.from_numpy(split.images[i : i + 64]).float().div_(255.0)[:, None]
                if v > 0:
                    x = torch.stack([aug(xi).clamp_(0, 1) for xi in x])
                x = to_model_tensor(x, family).contiguous(memory_format=torch.channels_last)
                feats.append(model.embed(x).float())
                labels.append(split.labels[i : i + 64])
    return torch.cat(feats), np.concatenate(labels)


def train_head(model: nn.Module, name: str, train: CachedSplit, val: CachedSplit, args: argparse.Namespace) -> dict[str, Any]:
    family = SPECS[name].family
    freeze(model.features, eval_mode=False)  # only the head trains (features are computed once, below)
    model = model.to(memory_format=torch.channels_last)
    t0 = time.time()
    xtr, ytr = extract_features(model, train, family, args.views, args.seed)
    xva, yva = extract_features(model, val, family, 1, args.seed)
    feature_seconds = time.time() - t0
    head = model.head
    opt = torch.optim.Adam(head.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    ytr_t = torch.as_tensor(ytr)
    sampler = balanced_sampler(ytr, args.seed)
    state: dict[str, Any] = {"history": [], "best_acc": -1.0}
    best = None
    for epoch in tqdm(range(args.epochs), desc=f"{name} head", mininterval=10):
        lr = lr_schedule(epoch, args.lr, args.lr_step)
        for g in opt.param_groups:
            g["lr"] = lr
        head.train()
        idx = torch.as_tensor(list(sampler))
        seen = correct = 0
        total = 0.0
        for i in range(0, len(idx), args.batch):
            b = idx[i : i + args.batch]
            logits = head(xtr[b])
            loss = loss_fn(logits, ytr_t[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(b)
            correct += int((logits.argmax(1) == ytr_t[b]).sum())
            total += float(loss) * len(b)
        head.eval()
        with torch.no_grad():
            vl = head(xva)
        val_acc = float((vl.argmax(1).numpy() == yva).mean())
        state["history"].append(
            {"epoch": epoch + 1, "train_loss": total / seen, "train_acc": correct / seen,
             "val_loss": float(loss_fn(vl, torch.as_tensor(yva))), "val_acc": val_acc, "lr": lr}
        )
        if val_acc > state["best_acc"]:
            state["best_acc"], state["best_epoch"] = val_acc, epoch + 1
            best = {k: v.clone() for k, v in head.state_dict().items()}
    assert best is not None
    head.load_state_dict(best)
    model.eval()
    state["seconds"] = time.time() - t0
    state["feature_seconds"] = feature_seconds
    state["epoch"] = args.epochs
    return state


def measure_latency(model: nn.Module, size: int, repeats: int = 30) -> float:
    """Median single-image forward time (ms) at the model's input size, fp32, as the app runs it."""
    model.eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        times = time_each(lambda _: model(x), list(range(repeats)), warmup=3)
    return float(np.median(times) * 1000.0)


# a refitted temperature this close to the committed one (relative) is the same fit: keep the committed value
TEMPERATURE_REFIT_TOLERANCE = 0.005


def score(model: nn.Module, family: str, val: CachedSplit, test: CachedSplit,
          prior_temperature: float | None = None,
          classes: Sequence[str] = settings.CLASSES) -> tuple[float, dict[str, Any], dict[str, Any]]:
    """Temperature and abstention threshold fitted on val, then val/test metrics: in fp32, as the
    app runs the model (bf16 scoring moved MobileNetV2's test accuracy by 0.8 points).

    `prior_temperature` (rescoring committed weights): kept when the refit lands within
    TEMPERATURE_REFIT_TOLERANCE of it, so the weights file is not rewritten for a difference in the
    optimiser's last digits; the refitted value is recorded beside it."""
    val_logits = predict_logits(model, val.images, family, fast=False)
    test_logits = predict_logits(model, test.images, family, fast=False)
    temperature = fitted = fit_temperature(val_logits, val.labels)
    if prior_temperature is not None and abs(fitted - prior_temperature) <= TEMPERATURE_REFIT_TOLERANCE * prior_temperature:
        temperature = float(prior_temperature)
    val_raw = torch.softmax(val_logits, 1).numpy()
    val_cal = torch.softmax(val_logits / temperature, 1).numpy()
    test_cal = torch.softmax(test_logits / temperature, 1).numpy()
    abstain = choose_abstain_threshold(val_cal, val.labels)
    metrics = {
        "val": compute_metrics(val.labels, val_cal, val.frame, classes),
        "test": compute_metrics(test.labels, test_cal, test.frame, classes),
    }
    answered = test_cal.max(1) >= abstain["abstain_threshold"]
    abstain["test_coverage"] = float(answered.mean())
    abstain["test_accuracy_answered"] = (float((test_cal.argmax(1)[answered] == test.labels[answered]).mean())
                                         if answered.any() else float("nan"))
    # 95 % intervals of the test abstention figures by the patient-group bootstrap of the metrics' ci95
    # (cxr_core.stats), as "<key>_ci95" beside each key, when the split knows each film's patient group.
    if stats.GROUP_COLUMN in test.frame.columns and len(test.labels):
        t = abstain["abstain_threshold"]
        cis = stats.bootstrap_cis({"test_coverage": stats.coverage(t), "test_accuracy_answered": stats.accuracy_answered(t)},
                                  test.labels, test_cal, test.frame[stats.GROUP_COLUMN])
        abstain |= {f"{k}_ci95": v for k, v in stats.ci_lists(cis).items()}
    before, after = reliability(val.labels, val_raw), reliability(val.labels, val_cal)
    calibration = {
        "temperature": temperature,
        **({"temperature_refit": fitted} if fitted != temperature else {}),
        "ece_before": before.pop("ece"),
        "ece_after": after.pop("ece"),
        "reliability_before": before,
        "reliability_after": after,
        **abstain,
    }
    return temperature, calibration, metrics


def rescore(args: argparse.Namespace) -> None:
    """Recompute calibration and metrics of committed weights without retraining (same split, fp32):
    for cards scored by an older version of this tool. Training fields are kept as they were."""
    name = args.model
    card_path, weights = args.out_dir / f"{name}.json", args.out_dir / f"{name}.pt"
    card = json.loads(card_path.read_text())
    if card["data"]["manifest_sha256"] != sha256_file(args.manifest):
        raise SystemExit(f"{args.manifest} is not the manifest {card_path} was trained on (checksum differs)")
    if card["data"].get("lung_crop") and not args.lung_crop:
        raise SystemExit(f"{name} was trained on lung crops: pass the same --lung-crop boxes")
    boxes_sha = card["data"].get("lung_boxes_sha256")
    if boxes_sha and sha256_file(args.lung_crop) != boxes_sha:
        raise SystemExit(f"{args.lung_crop} are not the chest boxes {card_path} was trained with (checksum differs)")
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    size = int(ckpt["input_size"])
    classes = checkpoint_classes(ckpt, card)
    model, _ = build_model(name, input_size=size, imagenet=False, num_classes=len(classes))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    model = model.to(memory_format=torch.channels_last).eval()
    cache = build_cache(args.manifest, size, args.lung_crop, classes)
    val, test = (load_split(cache, args.manifest, s, drop_failed=False, classes=classes) for s in ("val", "test"))
    prior = ckpt.get("temperature")
    temperature, card["calibration"], card["metrics"] = score(model, card["family"], val, test,
                                                              prior_temperature=float(prior) if prior is not None else None,
                                                              classes=classes)
    card["latency_ms"] = measure_latency(model, size)
    for m in card["metrics"].values():
        m["mean_latency_ms"] = card["latency_ms"]
    card["rescored"] = {
        "date": dt.date.today().isoformat(), "code_version": code_version(),
        "command": "python -m cxr_core.train --rescore " + " ".join(a for a in (args.argv or []) if a != "--rescore"),
        "why": "calibration and metrics recomputed in fp32 from the committed weights, as the app runs them",
    }
    if abs(float(ckpt.get("temperature", float("nan"))) - temperature) > 1e-9:
        # rewrite the weights only when the temperature moved: an unchanged file keeps its checksum,
        # so exports made from it (weights/onnx cards) stay valid
        torch.save(ckpt | {"temperature": temperature}, weights)
    card_path.write_text(json.dumps(card, indent=1))
    t = card["metrics"]["test"]
    print(f"{name}: rescored, test accuracy {t['accuracy']:.4f}, T={temperature:.2f} -> {card_path}")


# config key -> argparse destination, for the keys of cfg/classify.yaml
CONFIG_DEST = {"size": "size", "epochs": "epochs", "batch": "batch", "lr": "lr", "lr_step": "lr_step",
               "schedule": "schedule", "ema": "ema", "views": "views", "augment": "augment",
               "init_from": "init_from", "precision": "precision"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags on top of `--config FILE` on top of cxr_core/cfg/classify.yaml (one loader, strict keys)."""
    recipe = cfg.from_argv("classify", argv)
    ap = argparse.ArgumentParser(prog="python -m cxr_core.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, choices=settings.CLASSIFIERS)
    ap.add_argument("--config", type=Path, default=None,
                    help=f"YAML recipe on top of {cfg.path('classify').relative_to(settings.ROOT)} (unknown keys refused)")
    ap.add_argument("--data", "--manifest", dest="manifest", type=Path, default=settings.CXR3_MANIFEST, metavar="CSV|FOLDER",
                    help="manifest CSV (default: cxr3's), or a FOLDER with one sub-folder of images per class "
                         "(sorted names = classes; split 70/15/15 by class into <out-dir>/<model>.split.csv)")
    ap.add_argument("--size", type=int, help="input size (default: the model's paper size)")
    ap.add_argument("--epochs", type=int, help="default: 12 full-network, 40 head-only")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-step", type=int, help=f"halve the lr every N epochs (paper: {PAPER_LR_STEP})")
    ap.add_argument("--schedule", choices=SCHEDULES, help="step: halve every --lr-step epochs (paper); "
                    "cosine: from --lr to 0 over --epochs (a second stage from --init-from)")
    ap.add_argument("--augment", choices=AUGMENTATIONS, help="full mode: standard (positioning, exposure) or "
                    "acquisition (also gamma, noise, blur, JPEG, low resolution; see preprocess.train_augmentation)")
    ap.add_argument("--init-from", type=Path, metavar="WEIGHTS.pt",
                    help="full mode: start from these weights (e.g. weights/vbreathnet.pt) instead of a random initialisation")
    ap.add_argument("--ema", type=float, help="full mode: keep and score an EMA of the weights with this decay per step (0: off)")
    ap.add_argument("--views", type=int, help="head mode: clean + augmented views of the train split")
    ap.add_argument("--lung-crop", type=Path, default=None, help="CSV of chest boxes (python -m cxr_core.lungs crop-boxes)")
    ap.add_argument("--no-quality-filter", action="store_true")
    ap.add_argument("--no-resume", dest="resume", action="store_false")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="full mode: keep the resumable state here (default cache/runs/NAME); commit it to continue "
                         "a run in the next session, e.g. weights/checkpoints/vbreathnet-256")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="full mode: stop cleanly at an epoch boundary before N minutes; rerun the same command to continue")
    ap.add_argument("--precision", choices=("auto",) + PRECISIONS,
                    help="training arithmetic (auto: a ~20 s probe picks the fastest); scoring is always fp32")
    ap.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    ap.add_argument("--seed", type=int, default=settings.SEED)
    ap.add_argument("--out-dir", type=Path, default=settings.WEIGHTS_DIR)
    ap.add_argument("--limit", type=int, default=None, help="use only N images per split (smoke tests)")
    ap.add_argument("--rescore", action="store_true",
                    help="no training: recompute calibration and val/test metrics of weights in --out-dir (fp32)")
    ap.set_defaults(**{dest: recipe[key] for key, dest in CONFIG_DEST.items()}, classes=settings.CLASSES)
    args = ap.parse_args(argv)
    if not recipe["quality_filter"]:
        args.no_quality_filter = True
    if args.init_from is not None:
        args.init_from = Path(args.init_from)
        if not args.init_from.is_file():
            ap.error(f"--init-from {args.init_from}: no such weights file")
    if args.precision not in ("auto",) + PRECISIONS:
        ap.error(f"precision must be one of auto, {', '.join(PRECISIONS)} (config said {args.precision!r})")
    for key, allowed in (("schedule", SCHEDULES), ("augment", AUGMENTATIONS)):  # a config file skips argparse's choices
        if getattr(args, key) not in allowed:
            ap.error(f"{key} must be one of {', '.join(allowed)} (config said {getattr(args, key)!r})")
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe that ran (cfg/classify.yaml keys), for the model card."""
    out = {key: getattr(args, dest) for key, dest in CONFIG_DEST.items()} | {"quality_filter": not args.no_quality_filter}
    if out["init_from"] is not None:
        out["init_from"] = str(out["init_from"])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    if args.rescore:
        return rescore(args)
    name, spec = args.model, SPECS[args.model]
    folder = None
    if args.manifest.is_dir():  # a hospital's own folder of classes: split it (seeded) next to the card
        folder = args.manifest
        args.manifest, args.classes = split_folder(folder, args.out_dir / f"{name}.split.csv", args.seed)
    elif args.manifest.is_file():
        args.classes = manifest_classes(read_manifest(args.manifest, classes=None)["label"])
    classes, n_classes = tuple(args.classes), len(args.classes)
    model, pretrained = build_model(name, input_size=args.size, num_classes=n_classes)
    mode = "head" if pretrained else "full"
    size = args.size or (spec.default_size if (spec.is_paper_model or pretrained) else spec.scratch_size)
    if spec.size_dependent:
        model, _ = build_model(name, input_size=size, num_classes=n_classes)
    args.epochs = args.epochs or (40 if mode == "head" else 12)
    cache = build_cache(args.manifest, size, args.lung_crop, classes)
    drop = not args.no_quality_filter
    splits = {s: load_split(cache, args.manifest, s, drop_failed=drop and s == "train", classes=classes)
              for s in ("train", "val", "test")}
    if args.limit:  # a random subset of every split, for smoke tests
        rng = np.random.default_rng(args.seed)
        for s, cs in splits.items():
            keep = np.sort(rng.permutation(len(cs.labels))[: args.limit])
            splits[s] = CachedSplit(cs.images[keep], cs.labels[keep], cs.frame.iloc[keep].reset_index(drop=True))
    train, val, test = splits["train"], splits["val"], splits["test"]
    try:
        state = (train_head if mode == "head" else train_full)(model, name, train, val, args)
    except BudgetStop as stop:
        print(f"{name}: {stop}. Continue with: python -m cxr_core.train {' '.join(args.argv)}")
        return

    family = spec.family
    big = count_params(model)["total"] > 4_000_000
    if big:  # stored in fp16 for the weight budget (settings.WEIGHT_BUDGET_MB): score the weights the app will load
        model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    temperature, calibration, metrics = score(model, family, val, test, classes=classes)
    state_dict = {k: (v.half() if big and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # the classes travel with the weights (models.checkpoint_classes), so a retrained model loads as itself
    torch.save({"state_dict": state_dict, "input_size": size, "temperature": temperature, "mode": mode,
                "classes": list(classes)}, args.out_dir / f"{name}.pt")

    quality_counts = load_split(cache, args.manifest, "train", drop_failed=False, classes=classes).frame
    data_name = "cxr3" if folder is None and settings.is_cxr3(classes) else "the training data"
    deviations = []
    if size != spec.default_size:
        deviations.append(f"Input {size} px instead of the paper's {spec.default_size} px (measured CPU training cost).")
    if not spec.is_paper_model and not pretrained:
        deviations.append(f"No ImageNet weights available offline: the whole network was trained from scratch on {data_name}.")
        deviations += spec.scratch_deviations
    if any(seg["precision"].startswith("bf16") for seg in state.get("segments", [])):
        deviations.append("Trained under bf16 autocast on CPU (chosen by a speed probe); scored and shipped in fp32.")
    deviations += spec.deviations
    stage1: dict[str, Any] | None = None
    if args.init_from:  # the run that made the starting weights, as its card recorded it
        init_card = args.init_from.with_suffix(".json")
        stage1 = json.loads(init_card.read_text())["training"] if init_card.is_file() else None
        deviations.append(f"Two stages: {stage1['epochs'] if stage1 else '?'} epochs of the recipe in "
                          f"training.init_from, then {state['epoch']} epochs from those weights (this card's schedule).")
    if args.schedule == "cosine":
        deviations.append(f"Learning rate from {args.lr:g} to 0 over {args.epochs} epochs (cosine) instead of the paper's steps.")
    elif args.lr_step != PAPER_LR_STEP:
        deviations.append(f"Learning rate halved every {args.lr_step} epochs instead of the paper's {PAPER_LR_STEP}.")
    if args.augment == "acquisition":
        deviations.append("Acquisition augmentation (gamma, noise, blur, JPEG, low resolution) on top of the paper's: "
                          "the shift probe's perturbations lie inside its ranges, so those probe rows measure seen shifts.")
    if args.ema:
        deviations.append(f"Scored and shipped an exponential moving average of the weights (decay {args.ema} per step).")
    if args.lung_crop:
        deviations.append("Images cropped to the lung bounding box from the lung segmenter before resizing.")
    latency = measure_latency(model, size)
    for m in metrics.values():
        m["mean_latency_ms"] = latency
    card = {
        "name": name,
        "display_name": spec.display_name + ("" if pretrained or spec.is_paper_model else " (from scratch)")
        + (" + lung crop" if args.lung_crop else ""),
        "input_size": size,
        "family": family,
        "classes": list(classes),  # output order; load_classifier reads them (the checkpoint carries them too)
        "mode": mode,
        "pretrained": pretrained,
        "faithful_to_paper": (size == spec.default_size) if spec.is_paper_model else bool(pretrained),
        "deviations": deviations,
        "params": count_params(model),
        "paper": {"params_total": spec.paper_params_total, "test_accuracy": spec.paper_test_accuracy},
        "data": {
            "manifest": str(args.manifest.relative_to(settings.SHARED_DIR.parent)) if args.manifest.is_relative_to(settings.SHARED_DIR.parent) else str(args.manifest),
            "manifest_sha256": sha256_file(args.manifest),
            "split_sizes": {s: int(len(cs.labels)) for s, cs in splits.items()},
            "quality_filter": "cxr_core.quality.assess: 'fail' images dropped from train only" if drop else "off",
            "quality_verdicts_train": {
                c: quality_counts[quality_counts["label"] == c]["quality"].value_counts().to_dict() for c in classes
            },
            **({"folder": str(folder), "split_file": args.manifest.name,
                "split": f"stratified by class, seed {args.seed}: "
                         f"val {SPLIT_FRACTIONS['val']:.0%}, test {SPLIT_FRACTIONS['test']:.0%}, the rest train "
                         f"(pass {args.manifest.name} as --data to reproduce)"} if folder is not None else {}),
            "lung_crop": bool(args.lung_crop),
            **({"lung_boxes_sha256": sha256_file(args.lung_crop)} if args.lung_crop else {}),
        },
        "preprocessing": {"size": size, "family": family, "intensity": "robust 1-99 percentile stretch", "lung_crop": bool(args.lung_crop)},
        "training": {
            "epochs": state["epoch"], "best_epoch": state.get("best_epoch"), "seconds": state["seconds"],
            "batch": args.batch, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "optimizer": spec.optimizer,
            "schedule": (f"cosine from {args.lr:g} to 0 over {args.epochs} epochs" if args.schedule == "cosine"
                         else f"lr halved every {args.lr_step} epochs (min 1e-6)"), "balanced_sampling": True,
            "weight_ema": args.ema if mode == "full" else 0.0,
            "augmentation": AUGMENTATION_TEXT[args.augment if mode == "full" else "standard"],
            **({"init_from": (state.get("init_from") or {"weights": str(args.init_from),
                                                          "sha256": sha256_file(args.init_from)}) | {"training": stage1}}
               if args.init_from else {}),
            "history": state["history"],
            "segments": state.get("segments", []),
            "command": "python -m cxr_core.train " + " ".join(args.argv),
            "config": resolved_config(args),
        },
        "calibration": calibration,
        "metrics": metrics,
        "latency_ms": latency,
        "date": dt.date.today().isoformat(),
        "code_version": code_version(),
        "known_limits": KNOWN_LIMITS if folder is None and settings.is_cxr3(classes) else FOLDER_LIMITS,
    }
    (args.out_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    t = metrics["test"]
    print(f"{name}: test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, ECE {t['ece']:.4f}; "
          f"T={temperature:.2f}; weights and card -> {args.out_dir}/{name}.pt|.json")


if __name__ == "__main__":
    main()
