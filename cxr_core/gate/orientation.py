"""Is the film the right way round? Rotation (0/90/180/270), mirroring and inversion (negative).

Real archives hold scanned films turned on their side, plates read upside down, mirrored images
and negatives with a wrong photometric tag. Every pixel check of the quality gate passes them and
the not-a-CXR check catches only some, so the classifier would answer on a film it never learnt.

A tiny CNN (about 90 k parameters, 64 x 64 grey input: the same `standardise` the classifiers use)
reads three things at once: which of the four rotations was applied, whether the film is mirrored,
whether it is inverted. Its labels are made by the transforms themselves on cxr3 training films, so
no annotation is needed; the films as stored are taken as upright, unmirrored and positive.
The gate (`quality.assess`) fails rotated and inverted films with a reason naming it and only warns
on mirroring: dextrocardia and situs inversus look mirrored and are real.

    python -m cxr_core orient train            # ~minutes on 2 CPU cores; weights/orientation.pt + card
    python -m cxr_core orient val              # per data set: caught rotations/inversions, false alarms
    python -m cxr_core orient check film.dcm   # what it reads on one file
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from cxr_core import settings
from cxr_core.io import CXRImage
from cxr_core.preprocess import standardise

SIZE = 64  # input px: rotation, side and polarity are coarse properties of the whole film
ROTATIONS = (0, 90, 180, 270)  # degrees counter-clockwise applied to an upright film (np.rot90 k)
FALSE_ALARM_TARGET = 0.005  # thresholds are set so at most this share of upright val films is flagged


def weights_file() -> Path:
    return Path(settings.WEIGHTS_DIR) / "orientation.pt"


def card_file() -> Path:
    return Path(settings.WEIGHTS_DIR) / "orientation.json"


# --- the transforms that make the labels -----------------------------------------------------------


def transform(img: np.ndarray, k: int, mirror: bool, invert: bool) -> np.ndarray:
    """Rotate by k x 90 degrees counter-clockwise, then mirror left-right, then invert (uint8)."""
    out = np.rot90(img, k)
    if mirror:
        out = out[:, ::-1]
    if invert:
        out = 255 - out
    return np.ascontiguousarray(out)


def undo(pixels: np.ndarray, k: int, mirror: bool, invert: bool) -> np.ndarray:
    """The correction of `transform` for float pixels in [0, 1] (what the app offers)."""
    out = 1.0 - pixels if invert else pixels
    if mirror:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.rot90(out, -k))


# --- model ---------------------------------------------------------------------------------------


class OrientationNet(nn.Module):
    """Four conv blocks to a 4 x 4 map, flattened (mirroring is about where things are, so no global
    pooling), then 6 logits: 4 rotations, mirrored, inverted."""

    def __init__(self) -> None:
        super().__init__()
        chans = (1, 16, 32, 64, 96)
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(96 * 4 * 4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, 64, 64) -> float (N, 1, 64, 64), centred."""
    return (torch.as_tensor(batch).float().div_(255.0).sub_(0.5).div_(0.25)).unsqueeze(1)


@dataclass(frozen=True)
class Orientation:
    """What the check read on one film; `rotation` in degrees counter-clockwise (0 = upright)."""

    rotation: int
    mirrored: bool
    inverted: bool
    p_upright: float
    p_mirrored: float
    p_inverted: float

    @property
    def k(self) -> int:
        return ROTATIONS.index(self.rotation)

    def reasons(self) -> tuple[list[str], list[str]]:
        """(failing reasons, warnings) in the gate's plain language."""
        fail, warn = [], []
        if self.rotation == 180:
            fail.append("The film appears upside down (rotated by 180 degrees).")
        elif self.rotation:
            side = "counter-clockwise" if self.rotation == 90 else "clockwise"
            fail.append(f"The film appears rotated by 90 degrees ({side}).")
        if self.inverted:
            fail.append("The film appears inverted (negative): bone and air have swapped brightness.")
        if self.mirrored:
            warn.append("The film may be mirrored left-right: check the side marker (dextrocardia also looks "
                        "like this).")
        return fail, warn

    def to_dict(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "mirrored": self.mirrored, "inverted": self.inverted,
                "p_upright": round(self.p_upright, 4), "p_mirrored": round(self.p_mirrored, 4),
                "p_inverted": round(self.p_inverted, 4)}


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> tuple[OrientationNet, dict[str, float]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = OrientationNet()
    net.load_state_dict(ckpt["state_dict"])
    from cxr_core.models import freeze

    return freeze(net), {k: float(v) for k, v in ckpt["thresholds"].items()}


def available() -> bool:
    return weights_file().is_file()


def loaded() -> tuple[OrientationNet, dict[str, float]]:
    """(network, thresholds) from weights/orientation.pt, once per process and file version."""
    p = weights_file()
    return _load(str(p), p.stat().st_mtime_ns)


@torch.inference_mode()
def _probabilities(net: OrientationNet, batch: np.ndarray) -> np.ndarray:
    logits = net(to_input(batch))
    rot = torch.softmax(logits[:, :4], dim=1)
    flags = torch.sigmoid(logits[:, 4:])
    return torch.cat([rot, flags], dim=1).numpy()


def decide(probs: np.ndarray, thresholds: dict[str, float]) -> list[Orientation]:
    """Rows of (p_rot0..3, p_mirror, p_invert) -> orientations. A rotation is called only when the
    upright probability is below its threshold (set for the false-alarm target on val)."""
    out = []
    for p in probs:
        k = 0 if p[0] >= thresholds["upright"] else int(np.argmax(p[1:4])) + 1
        out.append(Orientation(ROTATIONS[k], bool(p[4] >= thresholds["mirrored"]), bool(p[5] >= thresholds["inverted"]),
                               float(p[0]), float(p[4]), float(p[5])))
    return out


def check(image: CXRImage | np.ndarray) -> Orientation:
    """Orientation of one film (pixels float in [0, 1], any size)."""
    pixels = image.pixels if isinstance(image, CXRImage) else np.asarray(image, dtype=np.float32)
    net, thresholds = loaded()
    with _LOCK:  # one small net shared by Streamlit's threads; BatchNorm in eval, but keep it simple
        probs = _probabilities(net, standardise(pixels, SIZE)[None])
    return decide(probs, thresholds)[0]


# --- data, training, thresholds ------------------------------------------------------------------------


def _split_images(split: str) -> np.ndarray:
    """cxr3 films of a split at 64 px, through the training cache (decoded once per size)."""
    from cxr_core.data import build_cache, load_split

    cache = build_cache(settings.CXR3_MANIFEST, 256)
    imgs = load_split(cache, settings.CXR3_MANIFEST, split, drop_failed=False).images
    import cv2

    return np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for im in imgs])


def all_variants(imgs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every film in all 16 variants, and the labels (k, mirror, invert) of each."""
    xs, ys = [], []
    for k in range(4):
        for m in (0, 1):
            for v in (0, 1):
                xs.append(np.stack([transform(im, k, bool(m), bool(v)) for im in imgs]))
                ys.append(np.tile([k, m, v], (len(imgs), 1)))
    return np.concatenate(xs), np.concatenate(ys)


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure differences between hospitals (gamma, contrast) and small shifts, never a rotation."""
    x = img.astype(np.float32) / 255.0
    x = np.clip((x ** rng.uniform(0.7, 1.4) - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    dy, dx = rng.integers(-3, 4, size=2)
    return np.rint(np.roll(x, (int(dy), int(dx)), axis=(0, 1)) * 255).astype(np.uint8)


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, target: float = FALSE_ALARM_TARGET) -> dict[str, float]:
    """Per flag, the threshold that flags at most `target` of the films without that transform."""
    upright = probs[labels[:, 0] == 0, 0]  # p(upright) on films that are upright
    return {
        "upright": float(np.quantile(upright, target)),
        "mirrored": float(max(0.5, np.quantile(probs[labels[:, 1] == 0, 4], 1 - target))),
        "inverted": float(max(0.5, np.quantile(probs[labels[:, 2] == 0, 5], 1 - target))),
    }


def scores(orients: list[Orientation], labels: np.ndarray) -> dict[str, Any]:
    """Caught rates per transform and false alarms on the films as they are."""
    rot = np.array([o.k for o in orients])
    mir = np.array([o.mirrored for o in orients])
    inv = np.array([o.inverted for o in orients])
    asis = (labels == 0).all(axis=1)
    rotated, mirrored, inverted = labels[:, 0] != 0, labels[:, 1] == 1, labels[:, 2] == 1

    def rate(mask: np.ndarray, hit: np.ndarray) -> float | None:
        return round(float(hit[mask].mean()), 4) if mask.any() else None

    return {
        "n_films": int(asis.sum()),
        "rotated_caught": rate(rotated, rot != 0),
        "rotation_exact": rate(rotated, rot == labels[:, 0]),
        "inverted_caught": rate(inverted, inv),
        "mirrored_caught": rate(mirrored, mir),
        "false_alarm_fail": rate(asis, (rot != 0) | inv),  # the gate would fail an upright positive film
        "false_alarm_mirror_warn": rate(asis, mir),
    }


def train(epochs: int = 12, batch: int = 128, lr: float = 2e-3, seed: int = settings.SEED,
          threads: int = settings.TORCH_THREADS) -> dict[str, Any]:
    """Train on cxr3 train (random transform per film and step), thresholds and scores on val."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    train_imgs, val_imgs = _split_images("train"), _split_images("val")
    net = OrientationNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(train_imgs) // batch))
    ce, bce = nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(train_imgs))
        total = 0.0
        for i in tqdm(range(0, len(order), batch), desc=f"orientation epoch {epoch + 1}/{epochs}", mininterval=10,
                      file=sys.stderr):
            idx = order[i:i + batch]
            lab = np.stack([rng.integers(0, 4, len(idx)), rng.integers(0, 2, len(idx)), rng.integers(0, 2, len(idx))], 1)
            xb = np.stack([transform(_augment(train_imgs[j], rng), *map(int, lab[n])) for n, j in enumerate(idx)])
            logits = net(to_input(xb))
            y = torch.as_tensor(lab)
            loss = ce(logits[:, :4], y[:, 0]) + bce(logits[:, 4], y[:, 1].float()) + bce(logits[:, 5], y[:, 2].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(order), 4)})
    net.eval()
    xv, yv = all_variants(val_imgs)
    pv = np.concatenate([_probabilities(net, xv[i:i + 512]) for i in range(0, len(xv), 512)])
    thresholds = choose_thresholds(pv, yv)
    val = scores(decide(pv, thresholds), yv)
    weights_file().parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "thresholds": thresholds, "size": SIZE}, weights_file())
    _load.cache_clear()
    return {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "threads": threads,
            "seconds": round(time.time() - t0, 1), "history": history, "thresholds": thresholds, "val": val,
            "n_train": int(len(train_imgs)), "n_val": int(len(val_imgs))}


def _real_sets(limit: int, seed: int) -> dict[str, list[Path]]:
    """Test films of cxr3 and the other real sets in ../shared (sampled to `limit` each)."""
    from cxr_core.gate.ood import REAL_DATASETS, _sample, real_cxr_paths

    out = {}
    for ds in REAL_DATASETS:
        paths = real_cxr_paths(ds, "all" if ds == "vinbigdata" else "test")
        if paths:
            out[ds] = _sample(paths, limit, seed)
    return out


def evaluate(limit: int = 200, seed: int = settings.SEED) -> dict[str, Any]:
    """Per real data set: every film in all 16 variants, through `check`'s exact path."""
    from tqdm import tqdm

    from cxr_core.io import ImageLoadError, load_image

    net, thresholds = loaded()
    out: dict[str, Any] = {}
    for ds, paths in _real_sets(limit, seed).items():
        imgs = []
        for p in tqdm(paths, desc=f"orientation {ds}", mininterval=10, file=sys.stderr):
            try:
                imgs.append(standardise(load_image(p).pixels, SIZE))
            except ImageLoadError:
                continue
        x, y = all_variants(np.stack(imgs))
        probs = np.concatenate([_probabilities(net, x[i:i + 512]) for i in range(0, len(x), 512)])
        out[ds] = scores(decide(probs, thresholds), y)
    return out


def write_card(info: dict[str, Any], per_source: dict[str, Any]) -> dict[str, Any]:
    from cxr_core.models import count_params
    from cxr_core.provenance import code_version, sha256_file

    card = {
        "name": "orientation",
        "task": "rotation (0/90/180/270), mirroring and inversion of a chest film",
        "input_size": SIZE,
        "params": count_params(OrientationNet()),
        "labels": "made by the transforms themselves on cxr3 training films taken as upright, unmirrored, positive",
        "training": {k: v for k, v in info.items() if k not in {"val", "thresholds"}}
        | {"command": "python -m cxr_core orient train", "optimizer": "AdamW, one-cycle",
           "augmentation": "gamma 0.7-1.4, contrast 0.8-1.2, brightness +-0.08, shifts +-3 px"},
        "thresholds": info["thresholds"] | {"false_alarm_target_on_val": FALSE_ALARM_TARGET},
        "metrics": {"val_cxr3": info["val"], "test": per_source,
                    "command": "python -m cxr_core orient val"},
        "gate": "rotation and inversion fail the quality check with a reason; mirroring only warns",
        "known_limits": [
            "Trained on cxr3 films only; the stored films are assumed upright, unmirrored and positive.",
            "Mirroring is read from anatomy (heart, aortic knob, gastric bubble): dextrocardia and situs inversus "
            "are flagged as mirrored, so mirroring only warns.",
            "Rotations other than multiples of 90 degrees are not modelled.",
        ],
        "weights_sha256": sha256_file(weights_file()),
        "date": dt.date.today().isoformat(),
        "code_version": code_version(),
    }
    card_file().write_text(json.dumps(card, indent=1))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxr_core.gate.orientation", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on cxr3 train, thresholds on val, scores on every real test set")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--limit", type=int, default=200, help="films per real data set in the test scores")
    t.add_argument("--threads", type=int, default=settings.TORCH_THREADS)
    v = sub.add_parser("val", help="scores per real data set with the committed weights")
    v.add_argument("--limit", type=int, default=200)
    c = sub.add_parser("check", help="orientation of files")
    c.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args(argv)
    if a.cmd != "train" and not available():
        print(f"No orientation weights at {weights_file()}: run `python -m cxr_core orient train`.", file=sys.stderr)
        return 2
    if a.cmd == "train":
        if not settings.CXR3_MANIFEST.is_file():
            print(f"cxr3 manifest not found at {settings.CXR3_MANIFEST}", file=sys.stderr)
            return 2
        info = train(a.epochs, threads=a.threads)
        card = write_card(info, evaluate(a.limit))
        print(json.dumps({"val": card["metrics"]["val_cxr3"], "test": card["metrics"]["test"]}, indent=1))
    elif a.cmd == "val":
        print(json.dumps(evaluate(a.limit), indent=1))
    else:
        from cxr_core.io import ImageLoadError, load_image

        status = 0
        for f in a.files:
            try:
                o = check(load_image(f))
            except ImageLoadError as exc:
                print(f"{f}: unreadable: {exc}")
                status = 1
                continue
            fail, warn = o.reasons()
            status = status or int(bool(fail))
            print(f"{f}: {json.dumps(o.to_dict())} {' '.join(fail + warn) or 'upright'}")
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
