"""PyTorch classifier -> ONNX file, checked and carded.

Exporter: torch's legacy TorchScript exporter (`torch.onnx.export(..., dynamo=False)`). In torch 2.14
the default (dynamo) exporter needs the extra `onnxscript` package and rewrites the graph with an
optimiser; the TorchScript path needs neither, gives the same graph for the same weights and is
what ultralytics uses for the detector too. Torch warns that it is deprecated; the warning is
silenced here and the choice is written on the card (`exporter`).

Every export is validated twice before its card is written:
1. `onnx.checker.check_model(full_check=True)` (graph, opset and shape inference);
2. ONNX Runtime against PyTorch on real cxr3 test films (the same preprocessing as the app):
   max |probability difference| after temperature scaling, max |logit difference|, class
   agreement, and accuracy / macro-F1 / ECE of both, all on the card (`check`).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cxr_core import settings

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FORMAT_VERSION = 1
# what a backend switch may change in a probability (fp32 ONNX vs PyTorch); tests use the same bound
FP32_PROB_TOLERANCE = 1e-4
MAX_FILE_MB = 25  # every file written into weights/ stays under this (commit size)


def default_dir() -> Path:
    """weights/onnx (follows settings.WEIGHTS_DIR, so a test that moves the weights moves this too)."""
    return settings.WEIGHTS_DIR / "onnx"


def onnx_path(name: str, int8: bool = False, out_dir: Path | None = None) -> Path:
    return Path(out_dir or default_dir()) / f"{name}{'.int8' if int8 else ''}.onnx"


def card_path_for(path: Path) -> Path:
    """`vbreathnet.onnx` -> `vbreathnet.json`, `vbreathnet.int8.onnx` -> `vbreathnet.int8.json`."""
    return Path(path).with_suffix(".json")


def read_onnx_card(path: Path) -> dict[str, Any] | None:
    p = card_path_for(path)
    return json.loads(p.read_text()) if p.is_file() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_opset(path: Path) -> int:
    """The default-domain (ai.onnx) opset the file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# --- real films ---------------------------------------------------------------------------------

@dataclass
class FilmSet:
    """Standardised films of one cxr3 split (uint8, the cache format of training), with labels.

    Stored before normalisation so a 256 px set of 618 films is 40 MB, not 480; `batch()` gives the
    exact tensor `Classifier.to_input` gives for the same file.
    """

    split: str
    std: np.ndarray  # (N, S, S) uint8
    labels: np.ndarray  # (N,) class index
    files: list[str]
    age_groups: list[str | None]
    family: str
    seed: int
    data: str = "cxr3"

    def __len__(self) -> int:
        return len(self.std)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        from cxr_core.preprocess import to_model_tensor

        return to_model_tensor(self.std[start:stop], self.family)

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "split": self.split, "n": len(self), "seed": self.seed,
                "sample": "all rows of the split" if self.seed < 0 else "seeded random sample (numpy default_rng)"}


def load_films(split: str, family: str, size: int, n: int | None = None, seed: int = settings.SEED,
               progress: bool = False) -> FilmSet:
    """`n` films of a cxr3 split (all when None), decoded and standardised as the app does.

    Raises FileNotFoundError when the cxr3 data is not on this machine.
    """
    from cxr_core.data import manifest_rows
    from cxr_core.io import load_image
    from cxr_core.preprocess import standardise

    rows = manifest_rows(split)
    if not rows:
        raise ValueError(f"The cxr3 manifest has no rows for split '{split}'.")
    if n is not None and n < len(rows):
        idx = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
        rows = [rows[i] for i in idx]
    else:
        seed = -1
    it: Any = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc=f"decode {split} films", unit="film", mininterval=5)
    std = np.stack([standardise(load_image(settings.CXR3_DIR / r["path"]).pixels, size) for r in it])
    labels = np.array([settings.CLASSES.index(r["label"]) for r in rows], dtype=int)
    return FilmSet(split=split, std=std, labels=labels, files=[r["path"] for r in rows],
                   age_groups=[r.get("age_group") or None for r in rows], family=family, seed=seed)


# --- export -------------------------------------------------------------------------------------

def export_module(model: torch.nn.Module, input_size: int, path: Path, opset: int = OPSET) -> Path:
    """Write `model` (eval mode) as ONNX with a dynamic batch axis and run the ONNX checker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, see module doc
            torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    finally:
        model.train(was_training)
    check_file(path)
    return path


def check_file(path: Path) -> None:
    """onnx.checker on the file (full check: also shape inference); raises onnx's ValidationError."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def session(path: Path, threads: int = 1):
    """A CPU ONNX Runtime session with `threads` intra-op threads (1 inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(sess: Any, x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.numpy() if isinstance(x, torch.Tensor) else x
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(arr, dtype=np.float32)})[0]


def logits_of(forward: Callable[[torch.Tensor], np.ndarray], films: FilmSet, batch: int = 16) -> np.ndarray:
    return np.concatenate([forward(films.batch(i, i + batch)) for i in range(0, len(films), batch)])


def torch_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    def f(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(x).float().numpy()
    return f


def probs_from_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    from cxr_core.classify import calibrated_probs

    return calibrated_probs(torch.from_numpy(np.asarray(logits, np.float32)), temperature)


def compare(ref_logits: np.ndarray, new_logits: np.ndarray, temperature: float,
            labels: np.ndarray | None = None, threshold: float | None = None) -> dict[str, Any]:
    """How far `new_logits` are from the PyTorch reference on the same films, and (with labels)
    accuracy / macro-F1 / ECE / answered share of both, with evaluate.py's own metric functions."""
    p_ref, p_new = probs_from_logits(ref_logits, temperature), probs_from_logits(new_logits, temperature)
    out: dict[str, Any] = {
        "n": int(len(p_ref)),
        "max_abs_prob_diff": float(np.abs(p_ref - p_new).max()),
        "mean_abs_prob_diff": float(np.abs(p_ref - p_new).mean()),
        "max_abs_logit_diff": float(np.abs(np.asarray(ref_logits) - np.asarray(new_logits)).max()),
        "class_agreement": float((p_ref.argmax(1) == p_new.argmax(1)).mean()),
    }
    if labels is not None:
        out["torch"] = score(labels, p_ref, threshold)
        out["this"] = score(labels, p_new, threshold)
        out["accuracy_points_vs_torch"] = round(100 * (out["this"]["accuracy"] - out["torch"]["accuracy"]), 3)
    return out


def score(labels: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """accuracy, macro-F1, ECE (evaluate.compute_metrics) and, with a threshold, the share the
    confidence rule answers and their accuracy (evaluate.abstention_summary, no quality gate)."""
    from cxr_core.classify.val import abstention_summary, compute_metrics

    m = compute_metrics(labels, probs)
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "ece": m["ece"]}
    if threshold is not None:
        ab = abstention_summary(np.asarray(labels), probs, threshold)
        out.update(answered_share=ab["coverage"], accuracy_answered=ab["accuracy_answered"])
    return out


def card_for(clf: Any, path: Path, *, check: dict[str, Any] | None, films: dict[str, Any] | None,
             opset: int, command: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON card written beside an ONNX file: what it needs to be used without PyTorch."""
    from cxr_core.classify import abstain_threshold
    from cxr_core.models import weights_path
    from cxr_core.preprocess import FAMILIES

    src = weights_path(clf.name)
    fam = FAMILIES[clf.family]
    card: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": clf.name,
        "display_name": clf.spec.display_name,
        "file": {"name": Path(path).name, "bytes": Path(path).stat().st_size,
                 "mb": round(Path(path).stat().st_size / 1e6, 3), "sha256": sha256_file(path)},
        "source_weights": {"name": src.name, "sha256": sha256_file(src) if src.is_file() else None},
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript exporter)",
        "opset": file_opset(path),
        "versions": versions(),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, clf.input_size, clf.input_size], "dtype": "float32",
                  "size": clf.input_size, "family": clf.family, "mean": list(fam.mean), "std": list(fam.std),
                  "preprocessing": "cxr_core.preprocess.image_to_tensor: square resize, 1st-99th percentile "
                                   "stretch to uint8, /255, grey copied to 3 channels, (x - mean) / std"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(clf.classes)], "meaning": "logits",
                   "class_order": list(clf.classes),
                   "probabilities": "softmax(logits / temperature)"},
        "temperature": float(clf.temperature),
        "abstain_threshold": abstain_threshold(clf),
        "check": None if check is None else {"films": films, **check},
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        card.update(extra)
    return card


def clean(obj: Any) -> Any:
    """NaN / inf (e.g. accuracy of answered films when none is answered) -> None, so cards are strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_card(path: Path, card: dict[str, Any]) -> Path:
    p = card_path_for(path)
    p.write_text(json.dumps(clean(card), indent=1, allow_nan=False) + "\n")
    return p


def size_guard(path: Path) -> None:
    """Refuse to leave a file over MAX_FILE_MB inside weights/ (commit size)."""
    path = Path(path)
    mb = path.stat().st_size / 1e6
    inside_weights = settings.WEIGHTS_DIR.resolve() in path.resolve().parents
    if inside_weights and mb > MAX_FILE_MB:
        path.unlink()
        raise ValueError(f"{path.name} is {mb:.1f} MB, over the {MAX_FILE_MB} MB limit for weights/; "
                         "export it with --out cache/onnx instead.")


def export_classifier(clf: Any, out_dir: Path | None = None, *, films: FilmSet | None = None,
                      opset: int = OPSET, command: str = "", log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Export a loaded `Classifier` to `out_dir/NAME.onnx`, check it and write its card."""
    path = onnx_path(clf.name, out_dir=out_dir)
    t = time.perf_counter()
    export_module(clf.model, clf.input_size, path, opset)
    size_guard(path)
    log(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB, opset {opset}) in {time.perf_counter() - t:.1f} s; "
        "onnx.checker passed")
    check = None
    if films is not None:
        from cxr_core.classify import abstain_threshold

        sess = session(path, threads=torch.get_num_threads())
        ref = logits_of(torch_forward(clf.model), films)
        new = logits_of(lambda x: run_session(sess, x), films)
        check = compare(ref, new, clf.temperature, films.labels, abstain_threshold(clf))
        log(f"  vs PyTorch on {len(films)} {films.split} films: max |prob diff| {check['max_abs_prob_diff']:.2e}, "
            f"class agreement {check['class_agreement']:.3f}")
    card = clean(card_for(clf, path, check=check, films=films.describe() if films is not None else None,
                          opset=opset, command=command))
    write_card(path, card)
    return path, card
