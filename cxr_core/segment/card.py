"""The lung segmenter's model card, written from what the training run recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from cxr_core import settings
from cxr_core.provenance import code_version


# --- model card ---------------------------------------------------------------------------------


def _schedule_note(stages: list[dict], epochs: int | None) -> str:
    """Say plainly when a run was resumed with other settings, since its history then mixes regimes."""

    def regime(st: dict) -> str:
        crop = f"random {st['crop']}x{st['crop']} windows" if st.get("crop") else "full 256x256 images"
        frozen = f", first {st['freeze_blocks']} encoder blocks frozen" if st.get("freeze_blocks") else ", all layers trained"
        return crop + frozen

    if len(stages) <= 1:
        return f"{epochs} epochs in one schedule: {regime(stages[0]) if stages else 'full 256x256 images, all layers trained'}."
    parts = [f"from epoch {st['epoch'] + 1}: {regime(st)}" for st in stages]
    return "resumed with other settings (see `stages`): " + "; ".join(parts) + "."


def write_card(run_dir: Path, weights: Path, metrics: dict, card: Path) -> dict:
    import pandas as pd

    hist = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    df = pd.read_csv(settings.LUNGSEG_DIR / "manifest.csv")
    split_sizes = {k: int(v) for k, v in df["split"].value_counts().items()}
    per_source = {
        src: {k: int(v) for k, v in df[df["id"].str.startswith(src + "_")]["split"].value_counts().items()}
        for src in ("gbseg", "darwin")
    }
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)

    stages = hist.get("settings") or []
    threads = sorted({st.get("threads", 1) for st in stages}) or [1]  # runs before threads were recorded used 1

    def brief(m: dict) -> dict:
        return {
            "n": m["n"], "dice": round(m["dice"], 4), "iou": round(m["iou"], 4),
            "per_source": {s: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()} for s, d in m["per_source"].items()},
        }

    info = {
        "name": "lungseg",
        "task": "both-lung segmentation of frontal chest X-rays (chest crop box, plausibility signal, viewer outline)",
        "model": {
            "architecture": "segmentation_models_pytorch.Unet",
            "encoder": settings.LUNGSEG_ENCODER,
            "encoder_init": "ImageNet (torchvision MobileNetV2 features, /work/shared/weights/mobilenet_v2_imagenet_features.pth)",
            "decoder_channels": list(settings.LUNGSEG_DECODER_CHANNELS),
            "heads": {"field": "visible lung field, heart excluded (GeneralBlockchain convention)",
                      "full": "lung outline incl. retrocardiac region (V7 Darwin convention); default"},
            "parameters": int(sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))),
            "file_bytes": weights.stat().st_size,
            "input": ckpt["config"].get("input"),
            "threshold": settings.LUNGSEG_THRESHOLD,
        },
        "data": {
            "set": "lungseg (/work/shared/data/lungseg): 463 real 256x256 letterboxed CXRs (ieee8023 images), GeneralBlockchain + V7 Darwin masks",
            "split_sizes": split_sizes,
            "split_sizes_per_source": per_source,
            "split_rule": "by patient (SHA-1 of patient id), from the data set",
            "limitations": "almost all images diseased (COVID-19/pneumonia), many AP/portable; no normal or TB screening images",
        },
        "training": {
            "epochs": hist.get("epoch"),
            "best_epoch": hist.get("best_epoch"),
            "train_minutes": round(hist.get("train_seconds", 0) / 60, 1),
            "hardware": f"CPU, {'/'.join(map(str, threads))} torch thread(s) of a 2-core machine",
            "schedule_note": _schedule_note(stages, hist.get("epoch")),
            "optimizer": "AdamW lr 1e-3, wd 1e-4, 1 epoch warm-up + cosine, batch 8",
            "loss": "BCE + soft Dice on each image's own-convention head",
            "augmentation": "rotation +-10 deg, scale 0.88-1.12, shift +-7%, brightness/contrast/gamma, light blur/noise; no flips",
            "selection": "best val Dice (mean of own-convention heads)",
            "stages": hist.get("settings"),
            "history": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in hist.get("history", [])
            ],
        },
        "metrics": {"val": brief(metrics["val"]), "test": brief(metrics["test"])},
        "latency": metrics.get("test", {}).get("latency"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "code_version": code_version(),
        "licence_note": "images: ieee8023 (per-image licences, many unstated) -> research / non-commercial use only; masks CC BY 4.0",
        "intended_use": "pre-processing crop and sanity check in a research decision-support prototype; not a diagnostic device",
    }
    card.write_text(json.dumps(info, indent=2))
    return info
