"""Model cards and JSON files in weights/ -> the tables the pages show (comparison, per group, ablations,
detector data), and markdown for the README. A model without a card is "not trained yet", never a row of
made-up numbers; every number comes from the files.

No Streamlit here, so every number the app shows can be checked from a notebook or a test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from cxr_core import settings


NOT_TRAINED = "not trained yet"
PAPER = "Paper-reported"
MEASURED = "Measured here"


# --- reading JSON files -------------------------------------------------------------------


def weights_dir() -> Path:
    """Read at call time so tests (and users) can point settings.WEIGHTS_DIR elsewhere."""
    return Path(settings.WEIGHTS_DIR)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from disk, or None when missing or unreadable (the page then says so)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_cards(names: Iterable[str] = settings.CLASSIFIERS) -> dict[str, dict[str, Any] | None]:
    """Model card per classifier name (None = not trained yet), in settings order."""
    return {n: read_json(weights_dir() / f"{n}.json") for n in names}


def has_weights(name: str) -> bool:
    return (weights_dir() / f"{name}.pt").is_file()


def display_name(name: str, card: Mapping[str, Any] | None = None) -> str:
    if card and card.get("display_name"):
        return str(card["display_name"])
    try:
        from cxr_core.models import SPECS

        return SPECS[name].display_name
    except Exception:  # registry unavailable (e.g. torch missing): fall back to the raw name
        return name


def class_label(cls: str) -> str:
    return settings.class_label(cls)


def card_classes(cards: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Every class the trained models in `cards` output (a card's `classes`; cxr3's when a card
    predates the field), cxr3's first: what a comparison of shipped and retrained models shows."""
    names = [c for card in cards.values() if card for c in (card.get("classes") or settings.CLASSES)]
    return settings.ordered_classes(names) or list(settings.CLASSES)


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def split_metrics(card: Mapping[str, Any] | None, split: str = "test") -> dict[str, Any]:
    m = _get(card, "metrics", split, default={})
    return m if isinstance(m, dict) else {}


def is_faithful(card: Mapping[str, Any] | None) -> bool:
    return bool(card) and bool(card.get("faithful_to_paper", False)) and not card.get("deviations")


def faithfulness_note(card: Mapping[str, Any] | None) -> str:
    if not card:
        return NOT_TRAINED
    if is_faithful(card):
        return "faithful to the paper"
    devs = [str(d) for d in card.get("deviations") or []]
    return "NOT faithful to the paper" + (": " + "; ".join(devs) if devs else "")


# --- model comparison -----------------------------------------------------------------------------

COMPARISON_COLUMNS: tuple[str, ...] = (
    "Model",
    "Status",
    "Faithful to paper",
    f"{MEASURED}: params total",
    f"{MEASURED}: params trainable",
    f"{MEASURED}: test accuracy",
    f"{MEASURED}: test coverage (share answered)",
    f"{MEASURED}: test accuracy on answered",
    f"{MEASURED}: test macro-F1",
    f"{MEASURED}: test ECE",
    f"{MEASURED}: training time (min)",
    f"{MEASURED}: latency (ms / image)",
    f"{PAPER}: params total",
    f"{PAPER}: test accuracy",
)


COVERAGE_KEYS = {"test": "test_coverage", "val": "val_coverage_at_threshold"}  # card field per split


def comparison_table(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> pd.DataFrame:
    """One row per classifier; measured figures and the paper's figures in separate columns."""
    rows = []
    for name, card in cards.items():
        m = split_metrics(card, split)
        seconds = _num(_get(card, "training", "seconds"))
        latency = _get(card, "latency_ms")
        if latency is None:
            latency = m.get("mean_latency_ms")
        rows.append(
            {
                "Model": display_name(name, card),
                "Status": "trained" if card else NOT_TRAINED,
                "Faithful to paper": ("yes" if is_faithful(card) else "no (see deviations)") if card else "",
                f"{MEASURED}: params total": _num(_get(card, "params", "total")),
                f"{MEASURED}: params trainable": _num(_get(card, "params", "trainable")),
                f"{MEASURED}: test accuracy": _num(m.get("accuracy")),
                # abstention at the card's threshold: share of films answered and accuracy on those
                f"{MEASURED}: test coverage (share answered)": _num(_get(card, "calibration", COVERAGE_KEYS.get(
                    split, f"{split}_coverage"))),
                f"{MEASURED}: test accuracy on answered": _num(_get(card, "calibration", f"{split}_accuracy_answered")),
                f"{MEASURED}: test macro-F1": _num(m.get("macro_f1")),
                f"{MEASURED}: test ECE": _num(m.get("ece")),
                f"{MEASURED}: training time (min)": seconds / 60.0 if not math.isnan(seconds) else math.nan,
                f"{MEASURED}: latency (ms / image)": _num(latency),
                f"{PAPER}: params total": _num(_get(card, "paper", "params_total")),
                f"{PAPER}: test accuracy": _num(_get(card, "paper", "test_accuracy")),
            }
        )
    df = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    if split != "test":
        df.columns = [c.replace("test ", f"{split} ") if c.startswith(MEASURED) else c for c in df.columns]
    return df


# Headline columns of the summary table -> where a card keeps the 95 % interval of that figure:
# ("metrics", key) = card.metrics[split].ci95[key] (classify.val.compute_metrics),
# ("calibration", key) = card.calibration[key + "_ci95"] (classify.train.score, test split only).
CI_SOURCES: dict[str, tuple[str, str]] = {
    "accuracy": ("metrics", "accuracy"),
    "coverage (share answered)": ("calibration", "coverage"),
    "accuracy on answered": ("calibration", "accuracy_answered"),
    "macro-F1": ("metrics", "macro_f1"),
    "ECE": ("metrics", "ece"),
}
CI_LABEL = "95 % CI"


def card_ci(card: Mapping[str, Any] | None, split: str, metric: str) -> tuple[float, float] | None:
    """(lo, hi) of a headline figure (a CI_SOURCES key) from the card, or None when not computed."""
    where, key = CI_SOURCES[metric]
    if where == "metrics":
        pair = _get(split_metrics(card, split), "ci95", key)
    else:
        field = COVERAGE_KEYS.get(split, f"{split}_coverage") if key == "coverage" else f"{split}_{key}"
        pair = _get(card, "calibration", f"{field}_ci95")
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return None
    lo, hi = _num(pair[0]), _num(pair[1])
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def format_ci(value: Any, ci: tuple[float, float] | None, decimals: int = 3) -> str:
    """'0.953 (95 % CI 0.936–0.968)'; the bare figure without an interval, '—' without a figure."""
    v = _num(value)
    if math.isnan(v):
        return "—"
    text = f"{v:.{decimals}f}"
    return text if ci is None else f"{text} ({CI_LABEL} {ci[0]:.{decimals}f}–{ci[1]:.{decimals}f})"


def summary_table(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> pd.DataFrame:
    """comparison_table for the page: accuracy, coverage, accuracy on answered, macro-F1 and ECE as text,
    each with its 95 % patient-group bootstrap interval when the card has one (see ci_notes otherwise).
    The other columns stay numbers. `python -m cxr_core.dashboard` prints it for the README."""
    df = comparison_table(cards, split)
    for metric in CI_SOURCES:
        col = f"{MEASURED}: {split} {metric}"
        df[col] = [format_ci(v, card_ci(card, split, metric)) for v, card in zip(df[col], cards.values())]
    return df


def rescore_command(name: str, card: Mapping[str, Any] | None = None) -> str:
    """The command that recomputes a card's metrics (and intervals) from its committed weights, no training."""
    crop = " --lung-crop CHEST_BOXES.csv" if _get(card, "data", "lung_crop") else ""  # rescore refuses without
    return f"python -m cxr_core.train --model {name} --rescore{crop}"


def ci_notes(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> list[str]:
    """One line per trained card whose intervals are missing from the summary table, saying how to get them.

    Intervals of coverage and accuracy on answered are computed on the test split only, so on the
    validation split only the metrics' intervals are expected."""
    expected = [m for m, (where, _) in CI_SOURCES.items() if split == "test" or where == "metrics"]
    table = comparison_table(cards, split)
    out = []
    for (name, card), (_, row) in zip(cards.items(), table.iterrows()):
        if not card:
            continue
        # a figure the card lacks (e.g. accuracy on answered when nothing was answered) needs no interval
        missing = [metric for metric in expected if card_ci(card, split, metric) is None
                   and not math.isnan(_num(row[f"{MEASURED}: {split} {metric}"]))]
        if not missing:
            continue
        none = all(card_ci(card, split, metric) is None for metric in CI_SOURCES)
        what = "CI not computed for this card" if none else (
            "CI not computed for " + ", ".join(missing))
        out.append(f"**{md_escape(display_name(name, card))}**: {what}: rescore with `{rescore_command(name, card)}`")
    return out


def deviations(cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, list[str]]:
    """Display name -> deviations from the paper, for models whose card says they are not faithful."""
    out: dict[str, list[str]] = {}
    for name, card in cards.items():
        if card and not is_faithful(card):
            out[display_name(name, card)] = [str(d) for d in card.get("deviations") or []] or [
                "card marks this model as not faithful to the paper"
            ]
    return out


ABLATIONS_DIR = "ablations"


def load_ablations() -> dict[str, dict[str, Any]]:
    """Ablation model cards, keyed by file stem: weights/ablations/<model>.json or <model>__<variant>.json.

    A model may have several variants (input size, lung crop); each is compared with the shipped card."""
    folder = weights_dir() / ABLATIONS_DIR
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        card = read_json(path)
        if card:
            out[path.stem] = card
    return out


def ablation_pairs(cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """For each shipped model with variants, {label: card}: the shipped card first, then each variant."""
    groups: dict[str, dict[str, Mapping[str, Any]]] = {}
    for stem, variant in load_ablations().items():
        name = stem.split("__", 1)[0]
        base = cards.get(name)
        if not base:
            continue
        group = groups.setdefault(name, {name: base})
        label = f"{name} ({stem.split('__', 1)[1]})" if "__" in stem else f"{name} (variant)"
        group[label] = variant
    return groups


def ablation_stem(label: str) -> str | None:
    """The file stem behind an `ablation_pairs` key: 'vbreathnet (128px)' -> 'vbreathnet__128px', a shipped
    model's key is its own stem, and an unnamed '(variant)' has none of its own (None)."""
    if not label.endswith(")") or " (" not in label:
        return label
    name, suffix = label[:-1].split(" (", 1)
    return None if suffix == "variant" else f"{name}__{suffix}"


def variant_names(pair: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Display name per `ablation_pairs` key, told apart: a variant whose card carries the same display
    name as another (a second training stage is still 'V-BreathNet') gets its variant suffix, e.g.
    'V-BreathNet (stage2)', so a table or the selection rule's sentence never names two rows alike."""
    names = {key: display_name(key.split(" (", 1)[0], card) for key, card in pair.items()}
    seen: dict[str, int] = {}
    for shown in names.values():
        seen[shown] = seen.get(shown, 0) + 1
    return {key: (f"{shown} ({key[:-1].split(' (', 1)[1]})" if seen[shown] > 1 and key.endswith(")") and " (" in key
                  else shown) for key, shown in names.items()}


def ablation_table(pair: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Validation and test side by side: the default is chosen on validation, test only reports it."""
    rows = []
    shown = variant_names(pair)
    for name, card in pair.items():
        row = {"Model": shown[name]}
        for split in ("val", "test"):
            m = split_metrics(card, split)
            row[f"{split} accuracy"] = _num(m.get("accuracy"))
            for group, gm in ((m.get("per_group") or {}).get("age_group") or {}).items():
                row[f"{split} accuracy, {group}"] = _num(gm.get("accuracy"))
        row["test share answered (abstention)"] = _num(_get(card, "calibration", "test_coverage"))
        rows.append(row)
    return pd.DataFrame(rows)


ABLATION_RECIPE = (("input_size",), ("mode",), ("training", "epochs"), ("training", "schedule"), ("training", "lr"),
                   ("training", "batch"), ("training", "seed"), ("training", "weight_ema"), ("data", "manifest_sha256"))
# What an ablation varies on purpose: a difference here is the factor under study, not a flaw.
ABLATION_FACTORS = (("input_size",), ("preprocessing", "lung_crop"))
RECIPE_DEFAULTS = {("training", "weight_ema"): 0.0}  # cards written before the field existed


def ablation_mismatch(pair: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Recipe fields in which a variant's run differs from the shipped one beyond the factor it varies
    (input size, lung crop): an ablation only means something if the rest agrees. With several
    variants, each line names the variant."""
    base, *variants = list(pair.values())
    labels = list(pair)[1:]
    shown = variant_names(pair)
    out = []
    for label, variant in zip(labels, variants):
        factors = {keys for keys in ABLATION_FACTORS if _get(base, *keys) != _get(variant, *keys)}
        for keys in ABLATION_RECIPE:
            if keys in factors and len(factors) == 1:
                continue
            a, b = (_get(c, *keys, default=RECIPE_DEFAULTS.get(keys)) for c in (base, variant))
            if a != b:
                line = f"{'.'.join(keys)}: {a} vs {b}"
                out.append(line if len(variants) == 1 else f"{shown[label]}: {line}")
    return out


def ablation_choice(pair: Mapping[str, Mapping[str, Any]],
                    probes: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """Which variant the selection rule (`cxr_core.classify.select`: validation accuracy within one
    standard error, then the least reading from outside the lungs) keeps as the shipped default.
    `probes` are the probe results by the pair's keys (`ui.probes.probes_for`)."""
    from cxr_core.classify.select import Candidate, choose

    candidates = []
    shown = variant_names(pair)
    for n, c in pair.items():
        m = split_metrics(c, "val")
        acc = _num(m.get("accuracy"))
        if math.isnan(acc):
            return None
        candidates.append(Candidate(shown[n], acc, int(m.get("n") or 0), (probes or {}).get(n)))
    if len(candidates) < 2:
        return None
    choice = choose(candidates)
    mismatch = ablation_mismatch(pair)
    caveat = (f" The runs differ in more than the factor under study ({'; '.join(mismatch)}): not a like-for-like comparison."
              if mismatch else "")
    return f"Default by the selection rule: **{choice.chosen}**. {choice.explanation}{caveat}"


def versus_statement(cards: Mapping[str, Mapping[str, Any] | None], model: str = "vbreathnet",
                     other: str = "mobilenet_v2", split: str = "test") -> str | None:
    """One plain sentence: does `model` beat `other` on this split's accuracy, read from the two cards.

    With both cards' 95 % intervals the sentence says whether they overlap (a difference inside
    overlapping intervals is not shown to be real); None when a card or its accuracy is missing."""
    a, b = cards.get(model), cards.get(other)
    acc_a, acc_b = (_num(split_metrics(c, split).get("accuracy")) if c else float("nan") for c in (a, b))
    if math.isnan(acc_a) or math.isnan(acc_b):
        return None
    na, nb = display_name(model, a), display_name(other, b)
    size = f" at {a.get('input_size')} px" if a.get("input_size") else ""
    verdict = "beats" if acc_a > acc_b else ("ties with" if acc_a == acc_b else "does not beat")
    text = f"On the cxr3 {split} split, {na}{size} ({acc_a:.3f}) {verdict} {nb} ({acc_b:.3f}) in accuracy."
    ci_a, ci_b = (_get(split_metrics(c, split), "ci95", "accuracy") for c in (a, b))
    if ci_a and ci_b:
        overlap = ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]
        text += (" Their 95 % intervals overlap, so the difference is not shown to be real."
                 if overlap else " Their 95 % intervals do not overlap.")
    return text


def trained(cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Mapping[str, Any]]:
    return {n: c for n, c in cards.items() if c}


GROUP_NOTE = (
    "In this dataset the classes come from different sources and age groups: COVID-19 images are all adult "
    "(COVID-19 Radiography Database), viral pneumonia images are all paediatric (Kermany, Guangzhou), and Normal "
    "is about half of each. Per-group numbers therefore mix class difficulty with source and age, and a model can "
    "score well by recognising the hospital or the patient's age rather than the disease."
)


def per_group_table(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> pd.DataFrame:
    """Long table: model, grouping (source / age group), group, n, accuracy and per-class recall.

    A class absent from a group (support 0) shows as missing, not as a recall of 0. Within-group
    macro-F1 is left out on purpose: it averages in the absent classes and is low by construction.
    """
    rows = []
    classes = card_classes(cards)
    for name, card in trained(cards).items():
        groups = split_metrics(card, split).get("per_group") or {}
        for grouping, values in groups.items():
            for value, gm in (values or {}).items():
                row = {
                    "Model": display_name(name, card),
                    "Grouping": str(grouping).replace("_", " "),
                    "Group": value,
                    "n": gm.get("n"),
                    "Accuracy": _num(gm.get("accuracy")),
                }
                for cls in classes:
                    rec = _get(gm, "per_class", cls, "recall")
                    sup = _get(gm, "per_class", cls, "support")
                    row[f"Recall {class_label(cls)}"] = math.nan if sup in (0, None) else _num(rec)
                rows.append(row)
    cols = ["Model", "Grouping", "Group", "n", "Accuracy"] + [f"Recall {class_label(c)}" for c in classes]
    return pd.DataFrame(rows, columns=cols)


# --- detector / data ------------------------------------------------------------------------------

DETECTOR_FILES = ("detector.json", "detector_metrics.json", "detector_figures.json")


def load_detector_files() -> dict[str, dict[str, Any] | None]:
    """{'card': ..., 'metrics': ..., 'figures': ...}; each None when the file is missing."""
    d = weights_dir()
    return {
        "card": read_json(d / "detector.json"),
        "metrics": read_json(d / "detector_metrics.json"),
        "figures": read_json(d / "detector_figures.json"),
    }


def detector_n_images(card: Mapping[str, Any] | None, figures: Mapping[str, Any] | None = None) -> int | None:
    """How many images the detector was trained on, from its card (None when unknown).

    `figures` is accepted for symmetry but deliberately not used: its counts describe the whole
    annotation table, not the images the detector actually saw.
    """
    if not isinstance(card, Mapping):
        return None
    train = _get(card, "data", "per_split", "train", "images")
    if isinstance(train, (int, float)) and not isinstance(train, bool):
        return int(train)
    parts = [_get(card, "data", k, "train") for k in ("vinbigdata_images_per_split", "tbx11k_images_per_split")]
    if any(isinstance(p, (int, float)) for p in parts):
        return int(sum(p for p in parts if isinstance(p, (int, float))))
    for key in ("n_train_images", "n_images_train", "train_images", "n_images"):
        v = card.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    return None


def detector_label(card: Mapping[str, Any] | None, figures: Mapping[str, Any] | None = None) -> str:
    n = detector_n_images(card, figures)
    return f"research preview — trained on {n:,} images" if n is not None else "research preview"


def detector_data_counts(card: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """{'VinBigData': {split: images}, 'TBX11K': {split: images}} from the detector card, when present."""
    out: dict[str, dict[str, int]] = {}
    for key, label in (("vinbigdata_images_per_split", "VinBigData"), ("tbx11k_images_per_split", "TBX11K")):
        v = _get(card, "data", key)
        if isinstance(v, Mapping) and v:
            out[label] = {str(k): int(n) for k, n in v.items() if isinstance(n, (int, float))}
    return out


def detector_limits(card: Mapping[str, Any] | None) -> list[str]:
    if not isinstance(card, Mapping):
        return []
    return [str(x) for x in (card.get("limitations") or card.get("known_limits") or [])]


def _find(d: Mapping[str, Any] | None, *keys: str) -> Any:
    if not isinstance(d, Mapping):
        return None
    for k in keys:
        if k in d and d[k] not in (None, {}, []):
            return d[k]
    return None


def _columns(obj: Any, label_key: str = "class") -> pd.DataFrame:
    """A table from a columnar dict ({"class": [...], "boxes": [...]}), a {label: n} / {label: {..}} dict
    or a list of row dicts. Scalar entries of a columnar dict (notes, totals) are ignored."""
    if isinstance(obj, Mapping) and isinstance(obj.get(label_key), list):
        n = len(obj[label_key])
        cols = {k: v for k, v in obj.items() if isinstance(v, list) and len(v) == n}
        return pd.DataFrame(cols)
    if isinstance(obj, list):
        df = pd.DataFrame([r for r in obj if isinstance(r, Mapping)])
        for alt in ("name", "label"):
            if label_key not in df.columns and alt in df.columns:
                df = df.rename(columns={alt: label_key})
        return df
    if isinstance(obj, Mapping):
        rows = []
        for k, v in obj.items():
            rows.append({label_key: str(k), **(dict(v) if isinstance(v, Mapping) else {"count": v})})
        return pd.DataFrame(rows)
    return pd.DataFrame()


def label_distribution_table(figures: Mapping[str, Any]) -> pd.DataFrame:
    """class, boxes, images, dataset: VinBigData classes plus the TBX11K classes when present."""
    parts = []
    vb = _columns(_find(figures, "label_distribution", "labels", "class_counts"))
    if not vb.empty:
        parts.append(vb.assign(dataset="VinBigData (all annotations)"))
    tb = _columns(_find(figures, "tbx11k"))
    if not tb.empty:
        parts.append(tb.assign(dataset="TBX11K"))
    if not parts:
        return pd.DataFrame(columns=["class", "boxes", "images", "dataset"])
    df = pd.concat(parts, ignore_index=True)
    for col in ("boxes", "images"):
        if col not in df.columns:
            df[col] = df["count"] if "count" in df.columns else math.nan
    return df[["class", "boxes", "images", "dataset"]]


def agreement_table(figures: Mapping[str, Any]) -> pd.DataFrame:
    df = _columns(_find(figures, "radiologist_agreement"))
    return df.rename(columns={
        "class": "Class", "mean_pairwise_iou": "Mean IoU between readers", "median_pairwise_iou": "Median IoU",
        "n_reader_pairs": "Reader pairs", "frac_images_marked_by_2plus": "Share marked by 2+ readers",
        "frac_images_marked_by_all": "Share marked by all readers",
    })


def per_class_ap_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Class, dataset, AP@0.4, AP@0.5, test boxes, and whether the class has enough test boxes."""
    per = metrics.get("per_class") or metrics.get("per_class_test") or []
    df = _columns(per)
    rows = []
    for _, m in df.iterrows():
        m = m.to_dict()
        support = m.get("support_boxes", m.get("support", m.get("n_boxes")))
        support = None if support is None or (isinstance(support, float) and math.isnan(support)) else int(support)
        validated = m.get("validated")
        if validated is None or (isinstance(validated, float) and math.isnan(validated)):
            validated = support is not None and support >= settings.DETECTOR_MIN_SUPPORT
        rows.append({
            "Class": str(m.get("class")),
            "Data": {"tbx11k": "TBX11K", "vinbigdata": "VinBigData"}.get(str(m.get("dataset")), m.get("dataset") or ""),
            "AP@0.4": _num(m.get("ap40", m.get("ap"))),
            "AP@0.5": _num(m.get("ap50")),
            "Test boxes": support,
            "Validated": "yes" if bool(validated) else "no (too few test boxes)",
        })
    return pd.DataFrame(rows, columns=["Class", "Data", "AP@0.4", "AP@0.5", "Test boxes", "Validated"])


def headline_detector_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for key, label in (("map40", "mAP@0.4"), ("map50", "mAP@0.5"), ("tb_ap40", "TB AP@0.4")):
        v = _num(_get(metrics, key))
        if not math.isnan(v):
            out[label] = v
    return out


# --- about page -----------------------------------------------------------------------------------------


def readme_section(path: Path, heading_startswith: str) -> str | None:
    """The markdown under the first '## ' heading that starts with the given text (case-insensitive)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    out: list[str] = []
    inside = False
    for ln in lines:
        if ln.startswith("## "):
            if inside:
                break
            inside = ln[3:].strip().lower().startswith(heading_startswith.lower())
            continue
        if inside:
            out.append(ln)
    text = "\n".join(out).strip()
    return text or None


def format_temperature(t: Any) -> str:
    """A calibration temperature to 2 decimals ('n/a' when missing)."""
    v = _num(t)
    return "n/a" if math.isnan(v) else f"{v:.2f}"


def card_summary(name: str, card: Mapping[str, Any]) -> pd.DataFrame:
    """Key facts of a model card as a two-column table."""
    test = split_metrics(card, "test")
    data = card.get("data") or {}
    rows = [
        ("Input size", f"{card.get('input_size', 'n/a')} px"),
        ("Family", card.get("family")),
        ("Initial weights", card.get("pretrained") or "random (trained from scratch)"),
        ("Faithful to the paper", "yes" if is_faithful(card) else "no"),
        ("Parameters (total / trainable)", f"{_get(card, 'params', 'total', default='n/a'):,} / "
         f"{_get(card, 'params', 'trainable', default='n/a'):,}" if isinstance(_get(card, 'params', 'total'), int)
         else "n/a"),
        ("Split sizes", ", ".join(f"{k} {v}" for k, v in (data.get("split_sizes") or {}).items()) or "n/a"),
        ("Test accuracy / macro-F1", f"{_num(test.get('accuracy')):.3f} / {_num(test.get('macro_f1')):.3f}"
         if test else "n/a"),
        ("Epochs / training time", f"{_get(card, 'training', 'epochs', default='n/a')} / "
         f"{_num(_get(card, 'training', 'seconds')) / 60:.1f} min"),
        ("Calibration temperature", format_temperature(_get(card, "calibration", "temperature"))),
        ("Abstain below", _get(card, "calibration", "abstain_threshold", default="n/a")),
        ("Trained on", card.get("date")),
        ("Code version", card.get("code_version")),
        ("Metrics recomputed", f"{_get(card, 'rescored', 'date')} (code {str(_get(card, 'rescored', 'code_version'))[:12]}): "
         f"{_get(card, 'rescored', 'why')}" if card.get("rescored") else None),
        ("Data manifest (sha256)", str(data.get("manifest_sha256") or "n/a")[:16]),
    ]
    return pd.DataFrame([(k, "n/a" if v in (None, "") else str(v)) for k, v in rows], columns=["Field", "Value"])


def comparison_styler(df: pd.DataFrame):
    """pandas Styler for the comparison table: number formats, '—' for missing, paper columns shaded."""
    fmt: dict[str, str] = {}
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):  # text cells (figures with their CI) as they are
            continue
        if "params" in c:
            fmt[c] = "{:,.0f}"
        elif "(min)" in c or "(ms" in c:
            fmt[c] = "{:.1f}"
        elif c.startswith((MEASURED, PAPER)):
            fmt[c] = "{:.3f}"
    paper_cols = [c for c in df.columns if c.startswith(PAPER)]
    styler = df.style.format(fmt, na_rep="—")
    if paper_cols:
        styler = styler.set_properties(subset=paper_cols, **{"background-color": "#f6f1e4"})
    return styler.hide(axis="index")


def styled(df: pd.DataFrame, decimals: int = 3, skip: Iterable[str] = ()):
    """Styler: floats to `decimals`, '—' for missing values, index hidden (for tables shown as-is)."""
    skip = set(skip)
    fmt = {c: f"{{:.{decimals}f}}" for c in df.columns
           if c not in skip and pd.api.types.is_float_dtype(df[c])}
    return df.style.format(fmt, na_rep="—").hide(axis="index")


_MD_SPECIAL = set("\\`*_[]~$|#")  # HTML is already off in st.markdown


def md_escape(text: Any) -> str:
    """Escape Markdown so file names and DICOM values are shown as plain text (no links, no formatting)."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))


# --- markdown summary for the README -------------------------------------------------------------


def markdown_table(df: pd.DataFrame, decimals: int = 3) -> str:
    """A GitHub-markdown table; floats rounded, missing values as '—'."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{decimals}f}")
        return md_escape(v) if v not in (None, "") else "—"

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr_core.dashboard`: the comparison and per-group tables as markdown (for the README)."""
    import argparse

    argparse.ArgumentParser(prog="python -m cxr_core.dashboard", description=main.__doc__).parse_args(argv)
    cards = load_cards()
    print("### Classifiers on the cxr3 test split\n")
    print(markdown_table(summary_table(cards).drop(columns=["Status"])))  # with 95 % CIs, as on the page
    for note in ci_notes(cards):
        print(f"\n{note}")
    print("\n### Per source / age group (test split)\n")
    print(markdown_table(per_group_table(cards)))
    from cxr_core.ui.probes import probes_for

    pairs = ablation_pairs(cards)
    if pairs:
        print("\n### Ablations (shipped model beside runs at another input size or on images cropped to the segmented lungs)")
    for pair in pairs.values():
        print("\n" + markdown_table(ablation_table(pair)))
        print("\n" + (ablation_choice(pair, probes_for(pair)) or ""))
    return 0
