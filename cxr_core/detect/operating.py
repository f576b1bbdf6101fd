"""The detector's TB operating point: how many boxes it draws on healthy chests, how many are right on TB films.

The TBX11K films the detector learned from are all TB-positive, so its validation says nothing about
false positives on healthy chests. This study runs the shipped detector exactly as the app does
(``detect()`` on the decoded film, original-image pixels, once at ``settings.DETECTOR_MIN_CONF``) and
thresholds the boxes in numpy:

* on cxr3 films labelled Normal (val split to choose, test split reported separately; adults and
  children separately, a seeded sample of at most ``max_per_group`` each): every tuberculosis box is a
  false positive; VinBigData-class boxes are counted too, but those films were never read for
  VinBigData findings, so they are "boxes on films labelled Normal", not proven false positives;
* on the TBX11K TB films of the detector's own val (and test) split: TB precision and recall at
  IoU 0.5, the two TB classes merged ("any TB lesion"), matched by ``val.match_predictions`` (the
  validator's own matching).

The operating point is the lowest threshold of a 0.01 grid whose TB false positives per Normal film
(worst age group) and TB precision meet ``settings.DETECTOR_TARGET_FP_PER_NORMAL_FILM`` and
``settings.DETECTOR_TARGET_PRECISION`` on val; it is written into the detector card as
``operating_point`` and becomes the app's default box threshold (``predict.default_threshold``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cxr_core import settings

TB_IDS: tuple[int, ...] = tuple(range(len(settings.VINBIG_CLASSES), len(settings.DETECTOR_CLASSES)))
AGE_GROUPS: tuple[str, ...] = ("adult", "paediatric")
GRID: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(settings.DETECTOR_MIN_CONF, 0.9501, 0.01), 2))
IOU: float = 0.5
MAX_PER_GROUP: int = 150
VINBIG_NOTE: str = (
    "boxes on films labelled Normal; VinBigData findings were not ruled out by a radiologist on these films"
)
COMMAND: str = "python -m cxr_core detect operating-point"


# --- the rule --------------------------------------------------------------------------------------


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and np.isnan(x))


def choose_operating_point(
    thresholds: Sequence[float],
    precision: Sequence[float | None],
    fp_per_film: Sequence[float],
    *,
    fp_target: float = settings.DETECTOR_TARGET_FP_PER_NORMAL_FILM,
    precision_target: float = settings.DETECTOR_TARGET_PRECISION,
) -> dict[str, Any]:
    """The lowest threshold with ``fp_per_film <= fp_target`` and ``precision >= precision_target``.

    When no threshold meets both, the lowest one meeting the false-positive target is taken (a reader
    is protected from spurious boxes first); when none meets even that, the highest threshold. The
    result says which case applied (``targets_met``, ``fp_target_met``, ``note``). A precision of
    None/NaN (no box at that threshold) never meets the precision target.
    """
    t = [float(x) for x in thresholds]
    if not (len(t) == len(precision) == len(fp_per_film)) or not t:
        raise ValueError("thresholds, precision and fp_per_film must be non-empty and of equal length")
    order = sorted(range(len(t)), key=lambda i: t[i])
    fp_ok = [i for i in order if _ok(fp_per_film[i]) and float(fp_per_film[i]) <= fp_target]
    both = [i for i in fp_ok if _ok(precision[i]) and float(precision[i]) >= precision_target]
    rule = (f"lowest threshold with at most {fp_target:g} TB false positives per Normal film (worst age group) "
            f"and TB precision at least {precision_target:g}")
    if both:
        i = both[0]
        return {"threshold": t[i], "index": i, "targets_met": True, "fp_target_met": True, "rule": rule,
                "note": "Both targets are met."}
    if fp_ok:
        i = fp_ok[0]
        return {"threshold": t[i], "index": i, "targets_met": False, "fp_target_met": True, "rule": rule,
                "note": f"No threshold meets both targets: the precision target ({precision_target:g}) is missed, "
                        "so the lowest threshold meeting the false-positive target was taken."}
    i = order[-1]
    return {"threshold": t[i], "index": i, "targets_met": False, "fp_target_met": False, "rule": rule,
            "note": f"No threshold meets the false-positive target ({fp_target:g} per Normal film): "
                    "the highest threshold of the grid was taken."}


# --- counting ---------------------------------------------------------------------------------------


def normal_film_rates(films: Sequence[tuple[np.ndarray, np.ndarray]], thresholds: Sequence[float]) -> dict[str, list]:
    """Per threshold, over films labelled Normal given as (confidences, class ids) of their boxes:
    TB boxes per film (all false positives), share of films with >= 1 TB box, VinBigData boxes per film."""
    th = np.asarray(thresholds, float)
    n = max(len(films), 1)
    tb_boxes, tb_films, vin_boxes = np.zeros(len(th)), np.zeros(len(th)), np.zeros(len(th))
    for conf, cls in films:
        conf, cls = np.asarray(conf, float), np.asarray(cls, int)
        is_tb = np.isin(cls, TB_IDS)
        above = conf[None, :] >= th[:, None]  # (thresholds, boxes)
        k = (above & is_tb[None, :]).sum(1)
        tb_boxes += k
        tb_films += k > 0
        vin_boxes += (above & ~is_tb[None, :]).sum(1)
    return {
        "tb_fp_per_film": [float(x) for x in tb_boxes / n],
        "films_with_tb_box": [float(x) for x in tb_films / n],
        "vinbig_boxes_per_film": [float(x) for x in vin_boxes / n],
    }


def tb_boxes_per_film(films: Sequence[tuple[np.ndarray, np.ndarray]], threshold: float) -> np.ndarray:
    """TB boxes at or above ``threshold`` on each film (films as (confidences, class ids))."""
    return np.array([int(((np.asarray(c, float) >= threshold) & np.isin(np.asarray(k, int), TB_IDS)).sum())
                     for c, k in films], int)


def rate_interval(per_film: np.ndarray, seed: int = settings.SEED, n_boot: int = 2000) -> list[float] | None:
    """95 % interval of boxes per film: percentile bootstrap over films (seeded), so films with several
    boxes count as the clusters they are."""
    per_film = np.asarray(per_film, float)
    if not len(per_film):
        return None
    rng = np.random.default_rng(seed)
    means = per_film[rng.integers(0, len(per_film), size=(n_boot, len(per_film)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def tb_precision_recall(
    conf: np.ndarray, tp: np.ndarray, n_true: int, thresholds: Sequence[float], tp_class: np.ndarray | None = None
) -> dict[str, list]:
    """Per threshold: TB boxes drawn, precision and recall from the boxes' confidences and true-positive
    flags (``match_predictions`` at the lowest threshold, valid at every higher one). Precision is None
    where no box is left."""
    th = np.asarray(thresholds, float)
    conf, tp = np.asarray(conf, float), np.asarray(tp, bool)
    above = conf[None, :] >= th[:, None]
    n_pred = above.sum(1)
    out: dict[str, list] = {"tb_boxes": [int(x) for x in n_pred]}
    for key, flags in (("", tp), ("_class_aware", tp_class)):
        if flags is None:
            continue
        hits = (above & np.asarray(flags, bool)[None, :]).sum(1)
        out["precision" + key] = [float(h / p) if p else None for h, p in zip(hits, n_pred)]
        out["recall" + key] = [float(h / n_true) if n_true else None for h in hits]
    return out


# --- the films -------------------------------------------------------------------------------------


def normal_films(split: str, max_per_group: int = MAX_PER_GROUP, seed: int = settings.SEED,
                 manifest: Path | None = None) -> dict[str, list[Path]]:
    """cxr3 films labelled Normal of one split, per age group, a seeded sample of at most ``max_per_group``."""
    from cxr_core.data import manifest_rows

    manifest = Path(manifest or settings.CXR3_MANIFEST)
    rows = [r for r in manifest_rows(split, manifest) if r["label"] == "normal"]
    out: dict[str, list[Path]] = {}
    for g, group in enumerate(AGE_GROUPS):
        sub = [r for r in rows if r.get("age_group") == group]
        if len(sub) > max_per_group:
            idx = np.random.default_rng([seed, g]).choice(len(sub), size=max_per_group, replace=False)
            sub = [sub[i] for i in sorted(idx)]
        out[group] = [manifest.parent / r["path"] for r in sub]
    return out


def labelled_films(split: str, label: str, max_n: int = MAX_PER_GROUP, seed: int = settings.SEED,
                   manifest: Path | None = None) -> list[Path]:
    """cxr3 films of one label and split, a seeded sample of at most ``max_n`` (TB not ruled out on them)."""
    from cxr_core.data import manifest_rows

    manifest = Path(manifest or settings.CXR3_MANIFEST)
    rows = [r for r in manifest_rows(split, manifest) if r["label"] == label]
    if len(rows) > max_n:
        idx = np.random.default_rng([seed, 100 + settings.CLASSES.index(label)]).choice(len(rows), size=max_n,
                                                                                           replace=False)
        rows = [rows[i] for i in sorted(idx)]
    return [manifest.parent / r["path"] for r in rows]


def tb_films(split: str, tbx_dir: Path = settings.TBX11K_DIR) -> list[tuple[str, Path, np.ndarray, np.ndarray]]:
    """TBX11K films of one split with their TB boxes in stored-image pixels (as ``detection prepare``
    writes them for the validator): (image id, path, xyxy (M, 4), class ids (M,))."""
    from cxr_core.detect.prepare import TB_SOURCE_TO_ID, _shared_images, rescale_boxes
    from cxr_core.boxes import Box

    out = []
    for image_id, rows, src, sp, orig, stored in _shared_images(Path(tbx_dir)):
        if sp != split:
            continue
        boxes = rescale_boxes([Box(r.x_min, r.y_min, r.x_max, r.y_max, class_id=TB_SOURCE_TO_ID[r.source_class])
                               for r in rows.itertuples() if r.source_class in TB_SOURCE_TO_ID], orig, stored)
        if not boxes:
            continue
        out.append((image_id, src, np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float32),
                    np.array([b.class_id for b in boxes], int)))
    return out


# --- the study ----------------------------------------------------------------------------------------


def _boxes(path: Path, weights: Path | None):
    from cxr_core.detect.predict import detect
    from cxr_core.io import load_image

    image = load_image(path)
    found = detect(image, conf=settings.DETECTOR_MIN_CONF, weights=weights)  # sorted by confidence
    # boxes come in original pixels; for the TBX11K JPEGs (stored = original) those are the label pixels
    xyxy = np.array([[b.x0, b.y0, b.x1, b.y1] for b in found], np.float32).reshape(-1, 4)
    return xyxy, np.array([b.confidence for b in found], float), np.array([b.class_id for b in found], int)


def _at(values: Mapping[str, list], i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in values.items()}


def _round(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return round(x, nd)
    if isinstance(x, list):
        return [_round(v, nd) for v in x]
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    return x


def study(
    weights: Path | None = None,
    *,
    splits: Sequence[str] = ("val", "test"),
    max_per_group: int = MAX_PER_GROUP,
    seed: int = settings.SEED,
    fp_target: float = settings.DETECTOR_TARGET_FP_PER_NORMAL_FILM,
    precision_target: float = settings.DETECTOR_TARGET_PRECISION,
    manifest: Path | None = None,
    tbx_dir: Path = settings.TBX11K_DIR,
    compare_to: float | None = None,
    other_labels: Sequence[str] = ("covid", "viral_pneumonia"),
    progress: bool = True,
    command: str = COMMAND,
) -> dict[str, Any]:
    """Run the detector on the Normal and TB films of ``splits`` (the first one chooses) and return the
    operating point with every number behind it (the card's ``operating_point``)."""
    import torch
    from tqdm import tqdm

    from cxr_core.detect.val import match_predictions
    from cxr_core.provenance import code_version

    torch.set_num_threads(max(1, settings.TORCH_THREADS))
    start = time.time()
    weights = Path(weights or settings.DETECTOR_WEIGHTS)
    jobs: list[tuple[str, str, Any]] = []
    n_true: dict[str, int] = {}
    normals = {sp: normal_films(sp, max_per_group, seed, manifest) for sp in splits}
    tbs = {sp: tb_films(sp, tbx_dir) for sp in splits}
    for sp in splits:
        jobs += [(sp, g, p) for g in AGE_GROUPS for p in normals[sp][g]]
        jobs += [(sp, "tb", f) for f in tbs[sp]]
        n_true[sp] = int(sum(len(f[3]) for f in tbs[sp]))
    others = {lab: labelled_films(splits[0], lab, max_per_group, seed, manifest) for lab in other_labels}
    jobs += [(splits[0], f"label:{lab}", p) for lab, paths in others.items() for p in paths]
    if not any(normals[splits[0]].values()) or not tbs[splits[0]]:
        raise FileNotFoundError(f"no Normal or no TB films in the {splits[0]} split (cxr3 manifest, {tbx_dir})")
    normal_boxes: dict[tuple[str, str], list] = {}
    tb_rows: dict[str, list] = {sp: [] for sp in splits}
    bar = tqdm(jobs, desc="operating point", unit="film", file=sys.stderr, mininterval=5, disable=not progress)
    for sp, kind, item in bar:
        if kind == "tb":
            _id, path, gt_xyxy, gt_cls = item
            xyxy, conf, cls = _boxes(path, weights)
            keep = np.isin(cls, TB_IDS)
            xyxy, conf, cls = xyxy[keep], conf[keep], cls[keep]
            merged = match_predictions(xyxy, np.zeros(len(cls), int), gt_xyxy, np.zeros(len(gt_cls), int), (IOU,))[:, 0]
            by_class = match_predictions(xyxy, cls, gt_xyxy, gt_cls, (IOU,))[:, 0]
            tb_rows[sp].append((conf, merged, by_class))
        else:
            _xyxy, conf, cls = _boxes(item, weights)
            normal_boxes.setdefault((sp, kind), []).append((conf, cls))

    def measure(thresholds: Sequence[float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sp in splits:
            rows = tb_rows[sp]
            cat = (lambda k: np.concatenate([r[k] for r in rows]) if rows else np.zeros(0))
            tb = tb_precision_recall(cat(0), cat(1).astype(bool), n_true[sp], thresholds, cat(2).astype(bool))
            normal = {g: normal_film_rates(normal_boxes.get((sp, g), []), thresholds) for g in AGE_GROUPS}
            out[sp] = {"tb_films": tb, "normal_films": normal}
        return out

    grid = measure(GRID)
    first = grid[splits[0]]
    worst_fp = [max(first["normal_films"][g]["tb_fp_per_film"][i] for g in AGE_GROUPS) for i in range(len(GRID))]
    choice = choose_operating_point(GRID, first["tb_films"]["precision"], worst_fp,
                                    fp_target=fp_target, precision_target=precision_target)
    i = choice.pop("index")

    def summary(values: Mapping[str, Any], j: int, sp: str, t: float) -> dict[str, Any]:
        tb = _at(values["tb_films"], j)
        per_film = {g: tb_boxes_per_film(normal_boxes.get((sp, g), []), t) for g in AGE_GROUPS}
        return {
            "tb_precision": tb["precision"], "tb_recall": tb["recall"], "tb_boxes": tb["tb_boxes"],
            "tb_precision_class_aware": tb["precision_class_aware"], "tb_recall_class_aware": tb["recall_class_aware"],
            "tb_fp_per_normal_film": {g: values["normal_films"][g]["tb_fp_per_film"][j] for g in AGE_GROUPS},
            "tb_fp_boxes_on_normal_films": {g: int(per_film[g].sum()) for g in AGE_GROUPS},
            "tb_fp_per_normal_film_ci95": {g: rate_interval(per_film[g], seed) for g in AGE_GROUPS},
            "normal_films_with_tb_box": {g: values["normal_films"][g]["films_with_tb_box"][j] for g in AGE_GROUPS},
            "vinbig_boxes_per_normal_film": {g: values["normal_films"][g]["vinbig_boxes_per_film"][j] for g in AGE_GROUPS},
        }

    counts = {sp: {"normal_films": {g: len(normals[sp][g]) for g in AGE_GROUPS}, "tb_films": len(tbs[sp]),
                   "tb_true_boxes": n_true[sp]} for sp in splits}
    result: dict[str, Any] = {
        "threshold": choice["threshold"],
        **choice,
        "targets": {"fp_per_normal_film": fp_target, "precision": precision_target},
        "chosen_on": splits[0],
        "classes": "tuberculosis (Active and Obsolete merged: any TB lesion)",
        "iou": IOU,
        **{sp: {**summary(grid[sp], i, sp, choice["threshold"]), **counts[sp]} for sp in splits},
        "vinbig_note": VINBIG_NOTE,
        "precision_note": (
            "Precision is measured on TB-positive films only (TBX11K has no healthy films here); false positives on "
            "healthy chests are measured separately on cxr3 films labelled Normal, a different source (adults: COVID-19 "
            "Radiography Database, children: Kermany et al., stored at 224 px), so both rates are estimates for "
            "films like these, not for every scanner."
        ),
        "grid": {"threshold": list(GRID), **grid},
        "min_conf": settings.DETECTOR_MIN_CONF,
        "max_films_per_age_group": max_per_group,
        "seed": seed,
        "weights": weights.name,
        "weights_bytes": weights.stat().st_size if weights.is_file() else None,
        "command": command,
        "date": _dt.date.today().isoformat(),
        "code_version": code_version(),
        "seconds": None,
    }
    result["meaning"] = meaning_text(result, splits[0])
    if others:
        rates = {lab: normal_film_rates(normal_boxes.get((splits[0], f"label:{lab}"), []), [choice["threshold"]])
                 for lab in others}
        result["tb_boxes_on_other_labels"] = {
            "split": splits[0],
            "films": {lab: len(paths) for lab, paths in others.items()},
            "tb_boxes_per_film": {lab: r["tb_fp_per_film"][0] for lab, r in rates.items()},
            "films_with_tb_box": {lab: r["films_with_tb_box"][0] for lab, r in rates.items()},
            "note": "cxr3 films labelled COVID-19 / viral pneumonia: TB was not ruled out on them, so these boxes are "
                    "not proven false; they show how often the app will draw a TB box beside such a suggestion.",
        }
    if compare_to is not None:
        prev = measure([float(compare_to)])
        result["at_previous_threshold"] = {"threshold": float(compare_to),
                                           **{sp: summary(prev[sp], 0, sp, float(compare_to)) for sp in splits}}
    result["seconds"] = round(time.time() - start, 1)
    return _round(result)


def meaning_text(op: Mapping[str, Any], split: str = "val") -> str:
    """One plain sentence of what the operating point means for a reader."""
    s = op.get(split) or {}
    fp = s.get("tb_fp_per_normal_film") or {}
    p, r = s.get("tb_precision"), s.get("tb_recall")

    def per100(x: Any) -> str:
        return f"{100 * float(x):.0f}" if _ok(x) else "n/a"

    parts = [f"At confidence {float(op['threshold']):.2f} the detector drew about {per100(fp.get('adult'))} "
             f"tuberculosis boxes per 100 adult films and {per100(fp.get('paediatric'))} per 100 children's films "
             "labelled Normal (all false)"]
    if _ok(p) and _ok(r):
        parts.append(f"on films with tuberculosis, {per100(p)} % of its TB boxes overlapped a radiologist's lesion "
                     f"and it found {per100(r)} % of those lesions ({split} split)")
    return "; ".join(parts) + "."


# --- the card ------------------------------------------------------------------------------------------


def limitation_text(op: Mapping[str, Any] | None) -> str:
    """The card's limitation about healthy chests, with the measured rate when there is one."""
    base = "it never saw a TB-negative TBX11K image"
    if not op or not isinstance(op.get(op.get("chosen_on", "val")), Mapping):
        return base + ", so its false positive rate on healthy chests is unmeasured."
    s = op[op.get("chosen_on", "val")]
    fp = s.get("tb_fp_per_normal_film", {})
    return (base + f"; on cxr3 films labelled Normal (another source) it draws {fp.get('adult', float('nan')):.3f} (adult) "
            f"and {fp.get('paediatric', float('nan')):.3f} (paediatric) TB boxes per film at its operating point "
            f"{float(op['threshold']):.2f} (card key operating_point).")


_SCALAR = r"(?:-?\d[\d.eE+-]*|null|true|false)"
_SCALAR_LIST = re.compile(r"\[\s*(" + _SCALAR + r"(?:,\s*" + _SCALAR + r")*)\s*\]")


def dumps_card(card: Mapping[str, Any]) -> str:
    """The card as indented JSON with lists of numbers on one line each (the threshold grid stays readable)."""
    text = json.dumps(card, indent=2)
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_to_card(result: Mapping[str, Any], card_path: Path = settings.DETECTOR_CARD) -> dict[str, Any]:
    """Add ``operating_point`` to the detector card (other keys kept) and update its healthy-chest limitation."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card["operating_point"] = dict(result)
    card["limitations"] = refresh_limitations(card.get("limitations") or [], result)
    tmp = card_path.with_name(card_path.name + f".tmp{os.getpid()}")
    tmp.write_text(dumps_card(card))
    tmp.replace(card_path)
    return card


def refresh_limitations(limitations: Iterable[str], op: Mapping[str, Any] | None) -> list[str]:
    """The card's limitations with the healthy-chest sentence replaced by the measured one."""
    out = []
    for item in limitations:
        item = str(item)
        k = item.find("it never saw a TB-negative TBX11K image")
        out.append(item[:k] + limitation_text(op) if k >= 0 else item)
    return out


def operating_point(card: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The card's ``operating_point`` when it is complete enough to show, else None."""
    op = (card or {}).get("operating_point") if isinstance(card, Mapping) else None
    if not isinstance(op, Mapping) or not _ok(op.get("threshold")):
        return None
    return dict(op)


def operating_point_table(op: Mapping[str, Any], thresholds: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3,
                                                                               0.4, 0.5)) -> list[dict[str, Any]]:
    """Rows for the detector page: TB precision/recall and FP per Normal film at a few thresholds and the
    chosen one (val split, or the split the point was chosen on)."""
    grid = op.get("grid") or {}
    split = op.get("chosen_on", "val")
    t_all = [float(t) for t in grid.get("threshold", [])]
    values = grid.get(split) or {}
    if not t_all or not values:
        return []
    chosen = float(op["threshold"])
    wanted = sorted({round(t, 2) for t in thresholds} | {round(chosen, 2)})
    rows = []
    for t in wanted:
        j = min(range(len(t_all)), key=lambda k: abs(t_all[k] - t))
        if abs(t_all[j] - t) > 1e-6:
            continue
        tb, nf = values["tb_films"], values["normal_films"]
        rows.append({
            "Threshold": t_all[j],
            "TB precision": tb["precision"][j],
            "TB recall": tb["recall"][j],
            "TB boxes per Normal film (adult)": nf["adult"]["tb_fp_per_film"][j],
            "TB boxes per Normal film (child)": nf["paediatric"]["tb_fp_per_film"][j],
            "VinBigData boxes per Normal film (adult)": nf["adult"]["vinbig_boxes_per_film"][j],
            "VinBigData boxes per Normal film (child)": nf["paediatric"]["vinbig_boxes_per_film"][j],
            "Chosen": "yes" if abs(t_all[j] - chosen) < 1e-6 else "",
        })
    return rows


def figure_threshold_note(figures: Mapping[str, Any] | None, card: Mapping[str, Any] | None) -> str | None:
    """A caption for "Predicted vs actual" when its stored threshold is not the app's default threshold."""
    from cxr_core.detect.predict import default_threshold

    pva = (figures or {}).get("predicted_vs_actual") if isinstance(figures, Mapping) else None
    if not isinstance(pva, Mapping) or not _ok(pva.get("threshold")):
        return None
    default = default_threshold(dict(card or {}))
    if abs(float(pva["threshold"]) - default) < 0.005:
        return None
    note = (f"This figure was computed at threshold {float(pva['threshold']):.2f}; the app's default is now "
            f"{default:.2f}.")
    op = operating_point(card)
    test = (op or {}).get("test") or {}
    if op and abs(float(op["threshold"]) - default) < 1e-6 and test.get("tb_boxes") is not None:
        note += (f" At {default:.2f} the detector draws {test['tb_boxes']} TB boxes on the {test.get('tb_films')} test "
                 f"TB films (radiologists: {test.get('tb_true_boxes')}).")
    return note + " Regenerate with `python -m cxr_core.detection figures`."
