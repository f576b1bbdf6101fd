"""Choose how a classifier runs: PyTorch (default), ONNX Runtime fp32, or ONNX Runtime int8.

    from cxr_core.export.backend import load
    clf = load("vbreathnet", backend="onnx-int8")        # weights/onnx/vbreathnet.int8.onnx
    pipeline.analyse("film.dcm", classifier=clf)          # same pipeline, same abstention rule

`load(name, "torch")` is `cxr_core.models.load_classifier(name)` itself, so the default changes
nothing. For the ONNX backends it returns an `OnnxClassifier`: a `Classifier` (same name, spec,
input size, temperature and model card, hence the same abstention threshold) whose `.model` is an
`OrtModule`:

* inside `torch.inference_mode()` - how `classify.predict`, `evaluate` and the benchmark run the
  forward pass - ONNX Runtime computes the logits;
* outside it - Grad-CAM (`explain.cam_at_input` leaves inference mode because it needs gradients
  and layer hooks) - the PyTorch twin computes them, so heatmaps of an ONNX classifier are
  PyTorch heatmaps of the same weights. `heatmap_note(clf)` is the sentence a UI shows for that.

An export whose card names other source weights than the current `weights/NAME.pt` is refused
(`StaleExportError`): a retrained model must be exported again before the ONNX path serves it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_core.export import BACKENDS
from cxr_core.models import Classifier, ModelUnavailableError, load_classifier, weights_path

HEATMAP_NOTE = ("Heatmap computed by the PyTorch model with the same weights: ONNX Runtime cannot compute "
                "Grad-CAM, so only the classification came from ONNX Runtime ({backend}).")


class StaleExportError(ModelUnavailableError):
    """The ONNX file was exported from other weights than the current weights/NAME.pt."""


class OrtModule(nn.Module):
    """Logits from an ONNX Runtime session inside inference mode, from the PyTorch twin outside it.

    The twin is a registered submodule, so `named_modules()` / `cam_layer` reach the same layers
    Grad-CAM uses for the PyTorch classifier. The session is created once; `InferenceSession.run`
    is safe to call from several threads.
    """

    def __init__(self, session: Any, twin: nn.Module, input_name: str, output_name: str) -> None:
        super().__init__()
        self.session = session
        self.twin = twin
        self.input_name, self.output_name = input_name, output_name
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_inference_mode_enabled():
            return self.twin(x)
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: arr})[0])

    @property
    def cam_layer(self) -> nn.Module:
        return self.twin.cam_layer  # type: ignore[return-value]


@dataclass
class OnnxClassifier(Classifier):
    """A `Classifier` whose forward pass runs in ONNX Runtime (see the module docstring)."""

    backend: str = "onnx"
    onnx_path: Path | None = None
    onnx_card: dict[str, Any] = field(default_factory=dict)
    torch_classifier: Classifier | None = field(default=None, repr=False)
    threads: int = 1

    heatmap_backend = "torch"

    @property
    def display_name(self) -> str:
        return f"{self.spec.display_name} ({self.backend})"

    @property
    def heatmap_note(self) -> str:
        return HEATMAP_NOTE.format(backend=self.backend)


def backend_of(clf: Any) -> str:
    """'torch', 'onnx' or 'onnx-int8' for any loaded classifier."""
    return getattr(clf, "backend", "torch")


def heatmap_note(clf: Any) -> str | None:
    """What a page should say under a heatmap of `clf` (None for a PyTorch classifier)."""
    return getattr(clf, "heatmap_note", None)


def available_backends(name: str, onnx_dir: Path | None = None) -> list[str]:
    """'torch' first, then each ONNX backend whose file exists for this model (a page offers only these)."""
    return ["torch"] + [b for b in BACKENDS if b != "torch" and onnx_file(name, b, onnx_dir).is_file()]


def onnx_file(name: str, backend: str, onnx_dir: Path | None = None) -> Path:
    from cxr_core.export.to_onnx import onnx_path

    if backend not in BACKENDS or backend == "torch":
        raise ValueError(f"Unknown ONNX backend '{backend}'. Known: {', '.join(BACKENDS)}")
    return onnx_path(name, int8=backend == "onnx-int8", out_dir=onnx_dir)


def export_command(name: str, backend: str) -> str:
    return f"python -m cxr_core.export --model {name}" + (" --int8" if backend == "onnx-int8" else "")


def load(name: str, backend: str = "torch", *, threads: int | None = None, onnx_dir: Path | str | None = None,
         check_source: bool = True) -> Classifier:
    """The classifier `name` on `backend` (loaded once per process per arguments).

    Raises KeyError for an unknown model, ValueError for an unknown backend, `ModelUnavailableError`
    when the weights or the ONNX file are missing, `StaleExportError` when the ONNX file was made from
    other weights (skip that check only in tests of the check itself: `check_source=False`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend '{backend}'. Known: {', '.join(BACKENDS)}")
    if backend == "torch":
        return load_classifier(name)
    if threads is None:
        threads = torch.get_num_threads()
    return _load_onnx(name, backend, int(threads), str(onnx_dir) if onnx_dir else None, check_source)


@functools.lru_cache(maxsize=None)
def _load_onnx(name: str, backend: str, threads: int, onnx_dir: str | None, check_source: bool) -> OnnxClassifier:
    from cxr_core.export import to_onnx

    twin = load_classifier(name)
    path = onnx_file(name, backend, Path(onnx_dir) if onnx_dir else None)
    if not path.is_file():
        raise ModelUnavailableError(f"{twin.spec.display_name} has no {backend} export ({path} is missing). "
                                    f"Make it with: {export_command(name, backend)}")
    card = to_onnx.read_onnx_card(path) or {}
    if check_source:
        want = (card.get("source_weights") or {}).get("sha256")
        have = to_onnx.sha256_file(weights_path(name))
        if want != have:
            raise StaleExportError(
                f"{path.name} was exported from other weights than the current {weights_path(name).name} "
                f"(card sha256 {str(want)[:12]}, weights {have[:12]}). Export again with: {export_command(name, backend)}")
    if card and abs(float(card.get("temperature", twin.temperature)) - twin.temperature) > 1e-6:
        raise StaleExportError(f"{path.name} carries temperature {card['temperature']}, the weights "
                               f"{twin.temperature}; export again with: {export_command(name, backend)}")
    if card and int(card.get("input", {}).get("size", twin.input_size)) != twin.input_size:
        raise StaleExportError(f"{path.name} reads {card['input']['size']} px, the weights "
                               f"{twin.input_size} px; export again with: {export_command(name, backend)}")
    sess = to_onnx.session(path, threads=threads)
    module = OrtModule(sess, twin.model, to_onnx.INPUT_NAME, to_onnx.OUTPUT_NAME)
    return OnnxClassifier(name=twin.name, spec=twin.spec, model=module, input_size=twin.input_size,
                          temperature=twin.temperature, card=twin.card, classes=twin.classes, backend=backend,
                          onnx_path=path,
                          onnx_card=card, torch_classifier=twin, threads=threads)


__all__ = ["BACKENDS", "HEATMAP_NOTE", "OnnxClassifier", "OrtModule", "StaleExportError", "backend_of",
           "heatmap_note", "load", "onnx_file"]
