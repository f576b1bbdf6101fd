"""One command line for every task: ``python -m cxr_core TASK MODE [options]``.

    python -m cxr_core --help                    # tasks
    python -m cxr_core classify --help           # modes of one task
    python -m cxr_core classify train --help     # options of one mode
    python -m cxr_core classify predict film.dcm --csv out.csv
    python -m cxr_core segment val --split test
    python -m cxr_core detect predict film.png

Why a table and not one big argparse tree: each mode keeps its own parser in its own module, so
the documented module commands (``python -m cxr_core.train|evaluate|predict|bench|lungs|
detection ...``) keep their flags and outputs and people's scripts keep working; this file only
routes. Modules are imported when their mode runs, so ``--help`` is instant.

Exit status, the same for every mode: 0 done; 1 the command ran and reported a problem (a file
judged bad, a failed check, rows with errors); 2 it could not run (usage error, missing data or
weights). A mode's own message goes to stderr, never a traceback for a known problem.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Mode:
    """Where one ``TASK MODE`` lives: ``module:function``, called with ``prefix + argv``."""

    target: str
    help: str
    prefix: tuple[str, ...] = ()


TASKS: dict[str, tuple[str, dict[str, Mode]]] = {
    "classify": ("COVID-19 / Normal / Viral pneumonia classifiers (V-BreathNet and baselines)", {
        "train": Mode("cxr_core.classify.train:main", "train a classifier on the cxr3 splits or a --data FOLDER of classes (resumable, budgeted)"),
        "val": Mode("cxr_core.classify.val:main", "score a trained classifier on a split (per source/age, probes)"),
        "predict": Mode("cxr_core.classify.predict_files:main", "classify files or folders, one CSV row per image"),
        "explain": Mode("cxr_core.classify.sanity:main", "write a class-activation overlay for one image", ("image",)),
        "sanity": Mode("cxr_core.classify.sanity:main", "heatmap sanity checks (randomisation, deletion)", ("sanity",)),
        "export": Mode("cxr_core.export.__main__:main", "ONNX (and --int8) export with a checked card (docs/export.md)"),
    }),
    "segment": ("lung segmentation U-Net", {
        "train": Mode("cxr_core.segment.__main__:main", "train the lung U-Net", ("train",)),
        "val": Mode("cxr_core.segment.__main__:main", "Dice / IoU on a split, and latency", ("evaluate",)),
        "predict": Mode("cxr_core.segment.__main__:main", "segment images and write masks", ("predict",)),
        "card": Mode("cxr_core.segment.__main__:main", "write the model card from a training run", ("card",)),
        "crop-boxes": Mode("cxr_core.segment.__main__:main", "chest boxes for the lung-crop ablation", ("crop-boxes",)),
    }),
    "detect": ("abnormality boxes (YOLO; 14 VinBigData findings + tuberculosis)", {
        "prepare": Mode("cxr_core.detect.__main__:main", "build the YOLO dataset from shared data", ("prepare",)),
        "train": Mode("cxr_core.detect.__main__:main", "train the detector", ("train",)),
        "val": Mode("cxr_core.detect.__main__:main", "AP per class on a split", ("evaluate",)),
        "predict": Mode("cxr_core.detect.__main__:main", "boxes for images", ("detect",)),
        "figures": Mode("cxr_core.detect.__main__:main", "dataset figures for the detector page", ("figures",)),
        "card": Mode("cxr_core.detect.__main__:main", "write the detector card", ("card",)),
        "export": Mode("cxr_core.detect.__main__:main", "export the trained weights", ("export",)),
        "operating-point": Mode("cxr_core.detect.__main__:main", "TB box threshold from Normal and TB films (card)", ("operating-point",)),
    }),
    "quality": ("image-quality gate", {
        "check": Mode("cxr_core.gate.quality:main", "quality verdict per file", ("check",)),
        "calibrate": Mode("cxr_core.gate.quality:main", "thresholds from the cxr3 training split", ("calibrate",)),
        "report": Mode("cxr_core.gate.quality:main", "how the gate treats each split", ("report",)),
    }),
    "ood": ("not-a-chest-X-ray check", {
        "check": Mode("cxr_core.gate.ood:main", "is each file a chest X-ray?", ("check",)),
        "fit": Mode("cxr_core.gate.ood:main", "fit the statistics of real CXRs", ("fit",)),
        "val": Mode("cxr_core.gate.ood:main", "rejection rates on real and synthetic images", ("evaluate",)),
    }),
    "orient": ("is the film rotated, mirrored or inverted? (part of the quality gate)", {
        "train": Mode("cxr_core.gate.orientation:main", "train on cxr3 train; thresholds on val; test scores", ("train",)),
        "val": Mode("cxr_core.gate.orientation:main", "caught transforms and false alarms per real data set", ("val",)),
        "check": Mode("cxr_core.gate.orientation:main", "orientation of files", ("check",)),
    }),
    "bench": ("latency of each pipeline stage", {
        "run": Mode("cxr_core.bench:main", "time every stage, ratios to a reference model"),
    }),
    "batch": ("score an archive on Ray (resumable)", {
        "run": Mode("cxr_core.batch.__main__:main", "score a folder or manifest into results.parquet/csv"),
    }),
    "pacs": ("DICOMweb (Orthanc): search, analyse, push SR and secondary capture", {
        "search": Mode("cxr_core.pacs.__main__:main", "find studies", ("search",)),
        "analyse": Mode("cxr_core.pacs.__main__:main", "analyse a study (and --push the results)", ("analyse",)),
    }),
    "tables": ("comparison tables from the model cards", {
        "print": Mode("cxr_core.dashboard:main", "print the classifier tables the README shows"),
    }),
}
SINGLE = {"bench", "batch", "tables"}  # tasks with one mode: `python -m cxr_core bench --out x` works too


def _usage(task: str | None = None) -> str:
    if task is None:
        lines = ["usage: python -m cxr_core TASK MODE [options]   (python -m cxr_core TASK --help for its modes)",
                 "", "tasks:"]
        lines += [f"  {name:<10} {about}" for name, (about, _) in TASKS.items()]
    else:
        about, modes = TASKS[task]
        lines = [f"usage: python -m cxr_core {task} MODE [options]   ({about})", "", "modes:"]
        lines += [f"  {name:<11} {m.help}" for name, m in modes.items()]
    lines += ["", "exit status: 0 done, 1 ran and found a problem, 2 could not run"]
    return "\n".join(lines)


def _call(mode: Mode, argv: list[str]) -> int:
    module_name, func_name = mode.target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except ImportError as exc:
        print(f"This mode is not available in this installation ({exc}).", file=sys.stderr)
        return 2
    try:
        result = func([*mode.prefix, *argv])
    except SystemExit as exc:  # argparse (2), or a mode that stops with a message
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 2
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    task, rest = args[0], args[1:]
    if task not in TASKS:
        print(f"Unknown task '{task}'.\n\n{_usage()}", file=sys.stderr)
        return 2
    modes = TASKS[task][1]
    if task in SINGLE and (not rest or rest[0] not in modes):
        rest = [next(iter(modes)), *rest]
    if not rest or rest[0] in {"-h", "--help"}:
        print(_usage(task))
        return 0 if rest else 2
    if rest[0] not in modes:
        print(f"Unknown mode '{rest[0]}' for {task}.\n\n{_usage(task)}", file=sys.stderr)
        return 2
    return _call(modes[rest[0]], rest[1:])


if __name__ == "__main__":
    raise SystemExit(main())
