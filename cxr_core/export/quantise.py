"""int8 static quantisation of an exported classifier with ONNX Runtime's quantisation tools.

Calibration data: cxr3 VALIDATION films only (`CALIBRATION_SPLIT`); asking for any other split
raises `CalibrationSplitError`, the test split with its own message, because activation ranges
fitted on test films would make every test figure of the int8 model optimistic.

Recipe (chosen on validation films, see docs/export.md "int8 recipe"):
* `quant_pre_process` (shape inference + ORT graph optimisation), then `quantize_static`;
* QDQ format, int8 weights per output channel, uint8 activations, MinMax calibration;
* the FIRST convolution stays float. Its input is one grey film copied to three channels, and
  rounding its three per-channel kernels to int8 separately changed many calls on held-out
  validation films; kept float, the file grows by a few kB. (Chosen on validation films only; the
  test-split effect of this recipe is on the int8 card.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cxr_core import settings
from cxr_core.export import to_onnx

CALIBRATION_SPLIT = "val"
DEFAULT_CALIBRATION_N = 128


class CalibrationSplitError(ValueError):
    """int8 calibration was asked to read a split other than validation."""


def check_calibration_split(split: str) -> str:
    if split == "test":
        raise CalibrationSplitError(
            "int8 calibration refuses the test split: the activation ranges would be fitted on the films "
            "the int8 model is then scored on. Calibrate on the validation split ('val').")
    if split != CALIBRATION_SPLIT:
        raise CalibrationSplitError(f"int8 calibration reads the validation split only ('val'), not '{split}'.")
    return split


def calibration_films(clf: Any, split: str = CALIBRATION_SPLIT, n: int | None = DEFAULT_CALIBRATION_N,
                      seed: int = settings.SEED, progress: bool = False) -> to_onnx.FilmSet:
    """Seeded sample of validation films for calibration (refuses any other split, before reading data)."""
    check_calibration_split(split)
    return to_onnx.load_films(split, clf.family, clf.input_size, n=n, seed=seed, progress=progress)


def first_conv(model_path: Path) -> list[str]:
    import onnx

    for node in onnx.load(str(model_path)).graph.node:
        if node.op_type == "Conv":
            return [node.name]
    return []


def quantise_file(fp32: Path, out: Path, films: to_onnx.FilmSet, keep_first_conv_float: bool = True) -> dict[str, Any]:
    """Write the int8 model of `fp32` to `out`, calibrated on `films` (must be validation films)."""
    from onnxruntime.quantization import CalibrationDataReader

    check_calibration_split(films.split)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(films):
                return None
            x = films.batch(self.i, self.i + 1).numpy()
            self.i += 1
            return {to_onnx.INPUT_NAME: x}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # per-channel notes on 1-D BatchNorm scales ("Axis 1 is out-of-range")
    try:
        exclude = _quantise(fp32, out, Reader(), keep_first_conv_float)
    finally:
        root.setLevel(level)
    to_onnx.check_file(out)
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ", "weights": "int8, per output channel", "activations": "uint8 (asymmetric)",
        "calibration_method": "MinMax", "calibration_films": films.describe(),
        "kept_float": exclude, "pre_process": "onnxruntime.quantization.shape_inference.quant_pre_process",
    }


def _quantise(fp32: Path, out: Path, reader: Any, keep_first_conv_float: bool) -> list[str]:
    """Pre-process and quantise; returns the names of the nodes kept float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        exclude = first_conv(pre) if keep_first_conv_float else []
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)
    return exclude


def quantise_classifier(clf: Any, fp32: Path, out_dir: Path | None = None, *, calib: to_onnx.FilmSet,
                        films: to_onnx.FilmSet | None = None, command: str = "",
                        log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """`out_dir/NAME.int8.onnx` from the exported fp32 file, checked against PyTorch on `films`."""
    from cxr_core.classify import abstain_threshold

    out = to_onnx.onnx_path(clf.name, int8=True, out_dir=out_dir)
    t = time.perf_counter()
    info = quantise_file(fp32, out, calib)
    to_onnx.size_guard(out)
    log(f"quantised {out} ({out.stat().st_size / 1e6:.2f} MB) on {len(calib)} {calib.split} films "
        f"in {time.perf_counter() - t:.1f} s; onnx.checker passed")
    check = None
    if films is not None:
        import torch

        sess = to_onnx.session(out, threads=torch.get_num_threads())
        ref = to_onnx.logits_of(to_onnx.torch_forward(clf.model), films)
        new = to_onnx.logits_of(lambda x: to_onnx.run_session(sess, x), films)
        check = to_onnx.compare(ref, new, clf.temperature, films.labels, abstain_threshold(clf))
        pts = check.get("accuracy_points_vs_torch")
        check["within_half_point_of_torch_accuracy"] = None if pts is None else bool(pts >= -0.5)
        if pts is not None and pts < -0.5:
            check["accuracy_note"] = (f"int8 accuracy is {-pts:.2f} points below PyTorch fp32 on these films "
                                      "(the goal is at most 0.5).")
        log(f"  vs PyTorch on {len(films)} {films.split} films: max |prob diff| {check['max_abs_prob_diff']:.3f}, "
            f"class agreement {check['class_agreement']:.3f}"
            + (f", accuracy {pts:+.2f} points" if pts is not None else ""))
    card = to_onnx.card_for(clf, out, check=check, films=films.describe() if films is not None else None,
                            opset=to_onnx.OPSET, command=command,
                            extra={"quantisation": info, "fp32_file": {"name": Path(fp32).name,
                                                                      "sha256": to_onnx.sha256_file(fp32)}})
    card = to_onnx.clean(card)
    to_onnx.write_card(out, card)
    return out, card
