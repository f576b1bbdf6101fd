"""Fine-tune the YOLOv5nu detector on CPU with ultralytics, resumably, and export the weights.

Run in the background, e.g.::

    nohup nice -n 10 python -m cxr_core.detection train > cache/detection/train.out 2>&1 &
    tail -f cache/detection/train_progress.log

``--resume`` continues from the run's ``weights/last.pt`` (ultralytics ``resume=True``).
At the end ``best.pt`` is copied to ``weights/detector.pt`` (see :func:`export`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from cxr_core import cfg as config
from cxr_core import settings
from cxr_core.detect.predict import trained_imgsz, ultralytics_offline

DEFAULT_CONFIG = config.path("detect")
RUNS_DIR = settings.CACHE_DIR / "detection" / "runs"
PROGRESS_LOG = settings.CACHE_DIR / "detection" / "train_progress.log"


def _ultralytics_keys() -> set[str]:
    """Every argument ultralytics' own cfg/default.yaml knows: a user's file may set any of them."""
    import ultralytics

    return set(yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "default.yaml").read_text()))


def load_config(path: Path | None = None, **overrides) -> dict:
    """cfg/detect.yaml, then `path`, then `overrides`; unknown keys refused (cxr_core.cfg.load)."""
    cfg = config.load("detect", path, overrides, extra_keys=_ultralytics_keys(), typed=False)
    cfg["model"] = str(cfg.get("model") or settings.YOLO_PRETRAINED)
    cfg["data"] = str(cfg.get("data") or settings.DETECTOR_DATA_DIR / "data.yaml")
    cfg["project"] = str(Path(cfg.get("project") or RUNS_DIR).resolve())
    cfg = {k: v for k, v in cfg.items() if v is not None}
    # never negotiable: offline and CPU-friendly
    cfg.update(plots=False, amp=False, workers=int(cfg.get("workers", 0)))
    return cfg


def run_dir(cfg: dict) -> Path:
    return Path(cfg["project"]) / cfg.get("name", "detector")


def _log(msg: str, log: Path = PROGRESS_LOG) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
    with log.open("a") as f:
        f.write(line + "\n")
    print(line, flush=True)


def _progress_callbacks(model, log: Path) -> None:
    state = {"t0": time.time(), "epoch_t0": time.time()}

    def on_train_epoch_start(trainer):
        state["epoch_t0"] = time.time()

    def on_train_batch_end(trainer):
        nb = len(trainer.train_loader)
        i = getattr(trainer, "_cxr_batch", 0) + 1
        trainer._cxr_batch = i % nb
        if i % 10 == 0:
            _log(f"epoch {trainer.epoch + 1}/{trainer.epochs} batch {i}/{nb} "
                 f"{(time.time() - state['epoch_t0']) / i:.1f}s/batch", log)

    def on_fit_epoch_end(trainer):
        m = trainer.metrics or {}
        what = "final validation of best.pt" if trainer.epoch + 1 > trainer.epochs else (
            f"epoch {trainer.epoch + 1}/{trainer.epochs}")
        _log(
            f"{what} done in {time.time() - state['epoch_t0']:.0f}s "
            f"(total {(time.time() - state['t0']) / 60:.1f} min) "
            f"val mAP50={m.get('metrics/mAP50(B)', float('nan')):.4f} "
            f"mAP50-95={m.get('metrics/mAP50-95(B)', float('nan')):.4f} fitness={trainer.fitness}",
            log,
        )

    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)


def train(config: Path | None = None, resume: bool = False, threads: int = 1, **overrides) -> Path:
    """Train (or resume) and return the run directory. Uses ``threads`` torch threads."""
    import torch

    torch.set_num_threads(max(1, threads))
    YOLO = ultralytics_offline()
    cfg = load_config(config, **overrides)
    rdir = run_dir(cfg)
    last = rdir / "weights" / "last.pt"
    # the default run logs to cache/detection/train_progress.log, any other project next to its runs
    log = PROGRESS_LOG if Path(cfg["project"]) == RUNS_DIR.resolve() else Path(cfg["project"]) / "train_progress.log"
    data_yaml = Path(cfg["data"])
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml} not found: run `python -m cxr_core.detection prepare` first.")
    t0 = time.time()
    if resume and last.is_file():
        _log(f"resuming from {last}", log)
        model = YOLO(str(last))
        _progress_callbacks(model, log)
        model.train(resume=True, plots=False, amp=False, workers=cfg["workers"])
    else:
        if resume:
            _log(f"nothing to resume at {last}; starting a new run", log)
        _log(f"training: {json.dumps(cfg)}", log)
        model = YOLO(cfg.pop("model"))
        _progress_callbacks(model, log)
        model.train(**cfg)
    elapsed = time.time() - t0
    info_path = rdir / "train_time.json"
    prev = json.loads(info_path.read_text()).get("seconds", 0.0) if (resume and info_path.is_file()) else 0.0
    info_path.write_text(json.dumps({"seconds": prev + elapsed, "threads": threads}))
    _log(f"training finished in {elapsed / 60:.1f} min (this session); run dir {rdir}", log)
    return rdir


def select_checkpoint(rdir: Path, data: Path | None = None) -> tuple[Path, dict]:
    """best.pt or last.pt, whichever has the higher TB AP@0.4 on the *val* split.

    ultralytics' best.pt maximises mAP50-95 over every val class, which here is dominated by
    VinBigData classes with 1-4 val boxes (noise); the TB classes are the ones with real support.
    """
    from cxr_core.detect.val import run_validator

    data = Path(data or settings.DETECTOR_DATA_DIR / "data.yaml")
    scores = {}
    for name in ("best.pt", "last.pt"):
        p = rdir / "weights" / name
        if not p.is_file():
            continue
        m, names = run_validator(p, data, "val", trained_imgsz(p))
        tb = [i for i, c in enumerate(m.box.ap_class_index) if names[int(c)] in settings.TB_CLASSES]
        scores[name] = float(np.asarray(m.box.all_ap)[tb, 0].mean()) if tb else 0.0
    if not scores:
        raise FileNotFoundError(f"no checkpoint in {rdir / 'weights'}")
    chosen = max(scores, key=lambda k: (scores[k], k == "last.pt"))
    return rdir / "weights" / chosen, {"val_tb_ap40": scores, "chosen": chosen}


def export(rdir: Path, dest: Path = settings.DETECTOR_WEIGHTS, select: bool = True, data: Path | None = None) -> Path:
    """Copy the run's chosen checkpoint (see select_checkpoint), optimizer-stripped, to ``dest``."""
    from ultralytics.utils.torch_utils import strip_optimizer

    if select:
        best, info = select_checkpoint(rdir, data)
        (rdir / "export.json").write_text(json.dumps(info, indent=1))
    else:
        best = rdir / "weights" / "best.pt"
        if not best.is_file():
            best = rdir / "weights" / "last.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.pt")
    shutil.copy2(best, tmp)
    strip_optimizer(str(tmp))
    tmp.replace(dest)
    size_mb = dest.stat().st_size / 2**20
    if size_mb > settings.WEIGHT_BUDGET_MB:
        raise RuntimeError(f"{dest} is {size_mb:.1f} MB (> {settings.WEIGHT_BUDGET_MB} MB)")
    return dest


def run_summary(rdir: Path) -> dict:
    """Epochs run, imgsz and training time of a run (from its args.yaml/results.csv)."""
    out: dict = {}
    args = rdir / "args.yaml"
    if args.is_file():
        a = yaml.safe_load(args.read_text())
        out.update(imgsz=a.get("imgsz"), batch=a.get("batch"), epochs_planned=a.get("epochs"),
                   optimizer=a.get("optimizer"), lr0=a.get("lr0"), time_budget_h=a.get("time"),
                   frozen_layers=a.get("freeze"))
    res = rdir / "results.csv"
    if res.is_file():
        import pandas as pd

        df = pd.read_csv(res)
        df.columns = [c.strip() for c in df.columns]
        out["epochs_completed"] = int(len(df))
        if "time" in df:
            out["train_seconds"] = float(df["time"].iloc[-1])
        out["best_val_map50"] = float(df["metrics/mAP50(B)"].max()) if "metrics/mAP50(B)" in df else None
    ex = rdir / "export.json"
    if ex.is_file():
        out["checkpoint_selection"] = json.loads(ex.read_text())
    tt = json.loads((rdir / "train_time.json").read_text()) if (rdir / "train_time.json").is_file() else {}
    out.setdefault("train_seconds", tt.get("seconds"))
    out["torch_threads"] = tt.get("threads", 1)  # runs before threads were recorded used 1
    return out
