"""Training with checkpoint/resume and a deadline-aware cosine schedule; the best-val-Dice model is exported."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from cxr_core import settings
from cxr_core.models import freeze
from cxr_core.segment.data import _augment, _random_crop, load_split
from cxr_core.segment.model import _normalise, build_model
from cxr_core.segment.val import _predict_all, score


def _masked_logits(logits: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """(N, K, S, S) logits -> (N, S, S): each image's own-convention head."""
    return logits[torch.arange(logits.shape[0]), heads]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    return bce + dice.mean()


# --- training -----------------------------------------------------------------------------------


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def export_weights(model: torch.nn.Module, path: Path, extra: dict | None = None) -> None:
    config = {
        "encoder": settings.LUNGSEG_ENCODER,
        "decoder_channels": list(settings.LUNGSEG_DECODER_CHANNELS),
        "heads": list(settings.LUNGSEG_HEADS),
        "size": settings.LUNGSEG_SIZE,
        "mean": list(settings.IMAGENET_MEAN),
        "std": list(settings.IMAGENET_STD),
        "input": "letterbox to 256 (INTER_AREA, zero pad, centred) -> robust_stretch -> ImageNet mean/std, 3 channels",
    }
    config.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, "config": config}, tmp)
    tmp.replace(path)


def train(
    epochs: int,
    out: Path,
    run_dir: Path,
    resume: bool = True,
    batch_size: int = 8,
    lr: float = 1e-3,
    threads: int = 1,
    log: Path | None = None,
    seed: int = settings.SEED,
    deadline: float | None = None,
    crop: int | None = None,
    freeze_blocks: int = 0,
) -> dict:
    """Train with checkpoint/resume (run_dir/last.pt); the best-val-Dice model is exported to `out`.

    `deadline` (a time.time() value): the cosine schedule is re-planned before every epoch to the
    number of epochs that still fit (at the mean epoch time so far), and training stops when the next
    epoch would not finish in time. On a shared CPU this keeps the schedule complete instead of
    cutting it off at a high learning rate.
    `crop`: train on random crop x crop windows of the (augmented) 256 images, same pixel scale as
    inference, less compute per step. `freeze_blocks`: keep the first N MobileNetV2 blocks (the
    expensive high-resolution ones) frozen, BatchNorm included.
    """
    from tqdm import tqdm

    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(log or run_dir / "train.log", "a", buffering=1)

    def say(msg: str) -> None:
        logf.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")

    train_data, val_data = load_split("train"), load_split("val")
    model = build_model(imagenet=True)
    frozen = model.encoder.features[:freeze_blocks] if freeze_blocks else None
    if frozen is not None:
        freeze(frozen, eval_mode=False)  # its BatchNorm is put in eval mode every epoch below
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": -1, "history": [], "train_seconds": 0.0}
    last = run_dir / "last.pt"
    if resume and last.is_file():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        say(f"resumed from {last} at epoch {state['epoch']}")
    n = len(train_data["ids"])
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch
    say(
        f"train n={n} val n={len(val_data['ids'])} epochs={epochs} batch={batch_size} lr={lr} threads={threads} "
        f"crop={crop} freeze_blocks={freeze_blocks}"
    )
    state.setdefault("settings", []).append(
        {"epoch": state["epoch"], "crop": crop, "freeze_blocks": freeze_blocks, "batch": batch_size, "lr": lr, "threads": threads}
    )
    planned = epochs
    first_epoch = state["epoch"]
    for epoch in range(state["epoch"], epochs):
        t0 = time.time()
        if deadline is not None and epoch > first_epoch:  # time only epochs run by this process
            per_epoch = float(np.mean([r["seconds"] for r in state["history"][first_epoch:][-2:]]))
            fit = int((deadline - t0) // per_epoch)
            if fit < 1:
                say(f"stopping before epoch {epoch + 1}: the deadline leaves no time for another epoch")
                break
            new_plan = max(epoch + 1, min(epochs, epoch + fit))
            if new_plan != planned:
                say(f"deadline: planning {new_plan} epochs in all ({per_epoch:.0f}s per epoch)")
            planned = new_plan
            if state["step"] >= planned * steps_per_epoch:  # re-planned below what has been run
                break
        total = planned * steps_per_epoch
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(n)
        model.train()
        if frozen is not None:
            frozen.eval()
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{planned}", file=logf, mininterval=20, ncols=100)
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs > 1 sample
                continue
            pairs = [_augment(train_data["images"][i], train_data["masks"][i], rng) for i in idx]
            if crop and crop < pairs[0][0].shape[0]:
                pairs = [_random_crop(im, mk, crop, rng) for im, mk in pairs]
            x = _normalise(torch.from_numpy(np.stack([p[0] for p in pairs])))
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))
            heads = torch.from_numpy(train_data["heads"][idx])
            for g in opt.param_groups:
                g["lr"] = _lr_at(state["step"], total, lr, warmup)
            loss = _loss(_masked_logits(model(x), heads), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", refresh=False)
        bar.close()
        probs = _predict_all(model, val_data["images"])
        val = score(probs, val_data)
        secs = time.time() - t0
        state["train_seconds"] += secs
        state["epoch"] = epoch + 1
        rec = {
            "epoch": epoch + 1,
            "planned_epochs": planned,
            "lr_end": opt.param_groups[0]["lr"],
            "loss": float(np.mean(losses)) if losses else None,
            "val_dice": val["dice"],
            "val_iou": val["iou"],
            "val_dice_gbseg": val["per_source"]["gbseg"].get("dice"),
            "val_dice_darwin": val["per_source"]["darwin"].get("dice"),
            "seconds": round(secs, 1),
        }
        state["history"].append(rec)
        improved = val["dice"] > state["best_dice"]
        if improved:
            state["best_dice"], state["best_epoch"] = val["dice"], epoch + 1
            export_weights(
                model,
                out,
                {"epoch": epoch + 1, "epochs_planned": epochs, "val_dice": round(val["dice"], 4)},
            )
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)
        (run_dir / "history.json").write_text(json.dumps(state, indent=1))
        say(
            f"epoch {epoch + 1}/{planned} loss {rec['loss']:.4f} val dice {val['dice']:.4f} "
            f"(gbseg {rec['val_dice_gbseg'] or 0:.4f}, darwin {rec['val_dice_darwin'] or 0:.4f}) iou {val['iou']:.4f} "
            f"{secs:.0f}s{' *best, exported' if improved else ''}"
        )
    say(f"done: best val dice {state['best_dice']:.4f} at epoch {state['best_epoch']}, {state['train_seconds'] / 60:.1f} min")
    logf.close()
    return state
