"""Pure helpers behind the Streamlit pages: model cards -> tables and plotly figures, plus the
small image operations of the viewer (window/level, zoom, lung outline).

Nothing here imports streamlit, so every number the app shows can be checked from a notebook or
a test. All figures come from the JSON files in ``settings.WEIGHTS_DIR``; no metric is written in
code. A model without a card is "not trained yet", never a row of made-up numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core import settings

NOT_TRAINED = "not trained yet"
PAPER = "Paper-reported"
MEASURED = "Measured here"

# Muted, colour-blind-friendly palette (Okabe-Ito), one colour per classifier / class.
MODEL_COLOURS: dict[str, str] = {
    "vbreathnet": "#0072B2",
    "densenet121": "#E69F00",
    "mobilenet_v2": "#009E73",
    "vgg16": "#CC79A7",
}
CLASS_COLOURS: dict[str, str] = {
    "covid": "#D55E00",
    "normal": "#009E73",
    "viral_pneumonia": "#0072B2",
}
_LAYOUT = dict(
    template="plotly_white",
    font=dict(family="Source Sans Pro, Helvetica, Arial, sans-serif", size=13, color="#1c2b36"),
    margin=dict(l=10, r=10, t=80, b=10),
    # Title top-left, above the plot area; the plotly toolbar sits top-right, in the margin's upper part.
    # pad.t: the title starts below the toolbar's row, so a long title never runs under its buttons.
    title=dict(x=0.0, xanchor="left", y=1.0, yref="container", yanchor="top", pad=dict(t=34, l=4),
               font=dict(size=15)),
)
# A horizontal legend just above the plot area (under the title), never over the data or axis titles.
LEGEND_TOP = dict(orientation="h", x=0.0, xanchor="left", y=1.02, yanchor="bottom")
# Below the plots, for figures without x-axis titles or with subplot titles on top.
LEGEND_BELOW = dict(orientation="h", x=0.0, xanchor="left", y=-0.12, yanchor="top")


def _layout(fig: go.Figure, title: str, **kwargs: Any) -> go.Figure:
    """The shared layout with a title (kept clear of the toolbar and the legend)."""
    base = {k: v for k, v in _LAYOUT.items() if k != "title"}
    fig.update_layout(**(base | kwargs))
    fig.update_layout(title=_LAYOUT["title"] | {"text": title})
    return fig


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
    return settings.CLASS_LABELS.get(cls, cls)


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
    """Ablation model cards (weights/ablations/<model>.json), keyed by model name; pairs with the main card."""
    folder = weights_dir() / ABLATIONS_DIR
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        card = read_json(path)
        if card:
            out[path.stem] = card
    return out


def ablation_pairs(cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """For each ablation, {label: card} for the shipped model and its variant, same split and training."""
    pairs = {}
    for name, variant in load_ablations().items():
        base = cards.get(name)
        if base:
            pairs[name] = {f"{name}": base, f"{name} (variant)": variant}
    return pairs


def ablation_table(pair: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Validation and test side by side: the default is chosen on validation, test only reports it."""
    rows = []
    for name, card in pair.items():
        row = {"Model": display_name(name, card)}
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
RECIPE_DEFAULTS = {("training", "weight_ema"): 0.0}  # cards written before the field existed


def ablation_mismatch(pair: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Recipe fields in which the two runs differ: an ablation only means something if these agree."""
    base, variant = list(pair.values())[:2]
    out = []
    for keys in ABLATION_RECIPE:
        a, b = (_get(c, *keys, default=RECIPE_DEFAULTS.get(keys)) for c in (base, variant))
        if a != b:
            out.append(f"{'.'.join(keys)}: {a} vs {b}")
    return out


def ablation_choice(pair: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Which variant the selection rule (higher validation accuracy) keeps as the shipped default."""
    scored = {display_name(n, c): _num(split_metrics(c, "val").get("accuracy")) for n, c in pair.items()}
    if len(scored) < 2 or any(math.isnan(v) for v in scored.values()):
        return None
    best = max(scored, key=scored.get)
    others = ", ".join(f"{n} {v:.3f}" for n, v in scored.items() if n != best)
    mismatch = ablation_mismatch(pair)
    caveat = (f" The two runs differ in more than the crop ({'; '.join(mismatch)}): not a like-for-like comparison."
              if mismatch else "")
    return f"Default by the rule (higher validation accuracy): **{best}** ({scored[best]:.3f} vs {others}).{caveat}"


def trained(cards: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Mapping[str, Any]]:
    return {n: c for n, c in cards.items() if c}


def per_class_figure(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> go.Figure:
    """Grouped bars: precision / recall / F1 per class, one colour per model."""
    metrics = ("precision", "recall", "f1")
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m.capitalize() if m != "f1" else "F1" for m in metrics],
                        shared_yaxes=True)
    for name, card in trained(cards).items():
        pc = split_metrics(card, split).get("per_class") or {}
        for j, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Bar(
                    x=[class_label(c) for c in settings.CLASSES],
                    y=[_num(_get(pc, c, metric)) for c in settings.CLASSES],
                    name=display_name(name, card),
                    legendgroup=name,
                    showlegend=j == 1,
                    marker_color=MODEL_COLOURS.get(name),
                    hovertemplate="%{x}: %{y:.3f}<extra>" + display_name(name, card) + "</extra>",
                ),
                row=1,
                col=j,
            )
    fig.update_yaxes(range=[0, 1.02])
    _layout(fig, f"Per-class metrics ({split} split)", barmode="group", height=400, legend=LEGEND_BELOW,
            margin=dict(l=10, r=10, t=100, b=10))
    return fig


def confusion_figure(card: Mapping[str, Any], split: str = "test", name: str = "") -> go.Figure:
    """Confusion-matrix heatmap (rows true, columns predicted) with counts and row percentages."""
    cm = np.asarray(split_metrics(card, split).get("confusion_matrix") or [], dtype=float)
    labels = [class_label(c) for c in settings.CLASSES]
    if cm.shape != (len(labels), len(labels)):
        cm = np.full((len(labels), len(labels)), np.nan)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, cm / rows, np.nan)
    text = [[("" if np.isnan(cm[i, j]) else f"{int(cm[i, j])}<br>{frac[i, j]:.0%}") for j in range(len(labels))]
            for i in range(len(labels))]
    fig = go.Figure(
        go.Heatmap(
            z=frac, x=labels, y=labels, text=text, texttemplate="%{text}", colorscale="Blues",
            zmin=0, zmax=1, showscale=False,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_traces(textfont=dict(size=14))
    fig.update_yaxes(autorange="reversed", title="true class")
    fig.update_xaxes(title="predicted class", side="bottom")
    _layout(fig, (display_name(name, card) if name or card else "") + " (row-normalised, counts shown)",
            height=400)
    return fig


def roc_figure(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> go.Figure:
    """One-vs-rest ROC curves, one panel per class, one line per model (AUC in the legend)."""
    fig = make_subplots(rows=1, cols=len(settings.CLASSES),
                        subplot_titles=[class_label(c) for c in settings.CLASSES], shared_yaxes=True)
    for name, card in trained(cards).items():
        m = split_metrics(card, split)
        for j, cls in enumerate(settings.CLASSES, start=1):
            curve = _get(m, "roc_curve", cls, default={}) or {}
            auc = _num(_get(m, "roc_auc", cls))
            if not curve.get("fpr"):
                continue
            fig.add_trace(
                go.Scatter(
                    x=curve["fpr"], y=curve["tpr"], mode="lines",
                    name=(f"{display_name(name, card)} · {class_label(cls)} (AUC {auc:.3f})" if not math.isnan(auc)
                          else f"{display_name(name, card)} · {class_label(cls)}"),
                    line=dict(color=MODEL_COLOURS.get(name), width=2),
                    legendgroup=f"{name}{cls}",
                ),
                row=1, col=j,
            )
    for j in range(1, len(settings.CLASSES) + 1):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#9aa5ad"),
                                 showlegend=False, hoverinfo="skip"), row=1, col=j)
    fig.update_xaxes(title="false-positive rate", range=[0, 1])
    fig.update_yaxes(title="true-positive rate", range=[0, 1.02], col=1)
    _layout(fig, f"ROC curves, one class vs rest ({split} split)", height=460,
            legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.22, yanchor="top"),
            margin=dict(l=10, r=10, t=100, b=10))
    return fig


def training_curves_figure(cards: Mapping[str, Mapping[str, Any] | None]) -> go.Figure:
    """Loss and accuracy per epoch; solid = train, dashed = validation."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Loss", "Accuracy"])
    for name, card in trained(cards).items():
        hist = _get(card, "training", "history", default=[]) or []
        if not hist:
            continue
        ep = [h.get("epoch") for h in hist]
        dn = display_name(name, card)
        colour = MODEL_COLOURS.get(name)
        for col, key in ((1, "loss"), (2, "acc")):
            for prefix, dash in (("train", "solid"), ("val", "dash")):
                fig.add_trace(
                    go.Scatter(
                        x=ep, y=[h.get(f"{prefix}_{key}") for h in hist], mode="lines",
                        name=f"{dn} {prefix}", legendgroup=f"{name}{prefix}", showlegend=col == 1,
                        line=dict(color=colour, dash=dash),
                    ),
                    row=1, col=col,
                )
    fig.update_xaxes(title="epoch")
    _layout(fig, "Training curves (solid: train, dashed: validation)", height=420,
            legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.2, yanchor="top"))
    return fig


def tradeoff_figure(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> go.Figure:
    """Accuracy vs parameter count (log x), marker size = latency."""
    fig = go.Figure()
    for name, card in trained(cards).items():
        acc = _num(split_metrics(card, split).get("accuracy"))
        params = _num(_get(card, "params", "total"))
        lat = _num(card.get("latency_ms", split_metrics(card, split).get("mean_latency_ms")))
        if math.isnan(acc) or math.isnan(params):
            continue
        size = 14 + (min(lat, 500.0) / 500.0 * 36 if not math.isnan(lat) else 0)
        dn = display_name(name, card)
        fig.add_trace(
            go.Scatter(
                x=[params], y=[acc], mode="markers+text", text=[dn], textposition="top center",
                name=dn, marker=dict(size=size, color=MODEL_COLOURS.get(name), line=dict(width=1, color="#333")),
                hovertemplate=f"{dn}<br>params %{{x:,.0f}}<br>accuracy %{{y:.3f}}<br>latency {lat:.1f} ms<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="parameters (total, log scale)")
    fig.update_yaxes(title=f"{split} accuracy")
    fig.update_yaxes(range=[0, 1.05])
    _layout(fig, "Accuracy vs size (marker size = CPU latency per image)", height=420, showlegend=False)
    return fig


def reliability_figure(card: Mapping[str, Any]) -> go.Figure:
    """Reliability diagram before and after temperature scaling."""
    fig = go.Figure()
    cal = card.get("calibration") or {}
    for key, label, colour in (("reliability_before", "before calibration", "#9aa5ad"),
                               ("reliability_after", "after calibration", "#0072B2")):
        r = cal.get(key) or {}
        if r.get("confidence"):
            fig.add_trace(go.Scatter(x=r["confidence"], y=r["accuracy"], mode="lines+markers", name=label,
                                     line=dict(color=colour)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#666"),
                             name="perfect calibration"))
    fig.update_traces(marker=dict(size=8), selector=dict(mode="lines+markers"))
    fig.update_xaxes(title="mean confidence", range=[0, 1], constrain="domain")
    fig.update_yaxes(title="accuracy", range=[0, 1.02], scaleanchor="x", constrain="domain")
    _layout(fig, "Reliability (validation split)", height=520, legend=dict(
        orientation="h", x=0.0, xanchor="left", y=-0.15, yanchor="top"), margin=dict(l=10, r=10, t=80, b=10))
    return fig


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
                for cls in settings.CLASSES:
                    rec = _get(gm, "per_class", cls, "recall")
                    sup = _get(gm, "per_class", cls, "support")
                    row[f"Recall {class_label(cls)}"] = math.nan if sup in (0, None) else _num(rec)
                rows.append(row)
    cols = ["Model", "Grouping", "Group", "n", "Accuracy"] + [f"Recall {class_label(c)}" for c in settings.CLASSES]
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


def label_distribution_figure(figures: Mapping[str, Any]) -> go.Figure | None:
    """Boxes and images per class (horizontal bars, two panels)."""
    df = label_distribution_table(figures)
    if df.empty:
        return None
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=["boxes (all radiologists)", "images"])
    colours = {"VinBigData (all annotations)": "#1f5f8b", "TBX11K": "#D55E00"}
    for ds, sub in df.groupby("dataset", sort=False):
        for col, key in ((1, "boxes"), (2, "images")):
            fig.add_trace(go.Bar(y=sub["class"], x=sub[key], orientation="h", name=str(ds),
                                 marker_color=colours.get(str(ds), "#9aa5ad"), legendgroup=str(ds),
                                 showlegend=col == 1), row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    _layout(fig, "Label distribution", height=max(400, 24 * len(df)), legend=LEGEND_BELOW,
            margin=dict(l=10, r=10, t=100, b=10))
    return fig


def box_area_figure(figures: Mapping[str, Any]) -> go.Figure | None:
    """Relative box area per class as box plots built from stored quantiles (5/25/50/75/95 %)."""
    fig = go.Figure()

    def add(name: str, qv: Any, colour: str) -> None:
        if not isinstance(qv, (list, tuple)) or len(qv) < 5 or any(v is None for v in qv[:5]):
            return
        q05, q25, q50, q75, q95 = (max(float(v), 1e-6) for v in qv[:5])
        fig.add_trace(go.Box(name=name, x=[name], q1=[q25], median=[q50], q3=[q75], lowerfence=[q05],
                             upperfence=[q95], marker_color=colour, line_color=colour, showlegend=False,
                             hovertemplate=f"{name}<extra></extra>"))

    area = _find(figures, "box_area", "box_area_quantiles") or {}
    per = area.get("per_class", area) if isinstance(area, Mapping) else {}
    for cls, q in (per.items() if isinstance(per, Mapping) else []):
        if isinstance(q, Mapping):
            qv = q.get("quantile_values")
            if qv is None:
                qv = [q.get(k) for k in ("q05", "q25", "q50", "q75", "q95")]
            add(str(cls), qv, "#1f5f8b")
        elif isinstance(q, list):
            add(str(cls), q, "#1f5f8b")
    tb = _columns(_find(figures, "tbx11k"))
    if not tb.empty and "area_quantile_values" in tb.columns:
        for _, row in tb.iterrows():
            add(str(row["class"]), row["area_quantile_values"], "#D55E00")
    if not fig.data:
        return None
    fig.update_yaxes(type="log", title="box area / image area (log scale)")
    fig.update_xaxes(title="class (blue: VinBigData, orange: TBX11K)", tickangle=-45, type="category")
    _layout(fig, "Box size per class (box: 25-75 %, whiskers: 5-95 %)", height=560)
    return fig


def predicted_vs_actual_figure(figures: Mapping[str, Any]) -> go.Figure | None:
    """Per class: radiologists' boxes vs detector boxes on the held-out split."""
    obj = _find(figures, "predicted_vs_actual", "pred_vs_actual")
    df = _columns(obj)
    if df.empty:
        return None
    a_col = next((c for c in ("actual_boxes", "actual") if c in df.columns), None)
    p_col = next((c for c in ("predicted_boxes", "predicted") if c in df.columns), None)
    if a_col is None or p_col is None:
        return None
    fig = go.Figure()
    fig.add_trace(go.Bar(y=df["class"], x=df[a_col], orientation="h", name="radiologists (actual)",
                         marker_color="#9aa5ad"))
    fig.add_trace(go.Bar(y=df["class"], x=df[p_col], orientation="h", name="detector (predicted)",
                         marker_color="#1f5f8b"))
    split = obj.get("split", "test") if isinstance(obj, Mapping) else "test"
    extra = ""
    if isinstance(obj, Mapping) and obj.get("n_images") is not None:
        extra = f", {obj['n_images']} images"
        if obj.get("threshold") is not None:
            extra += f", threshold {float(obj['threshold']):.2f}"
    fig.update_yaxes(autorange="reversed")
    _layout(fig, "Boxes per class: detector vs radiologists", barmode="group", height=max(400, 28 * len(df)),
            xaxis_title=f"boxes ({split} split{extra})", legend=LEGEND_TOP, margin=dict(l=10, r=10, t=100, b=10))
    return fig


def boxes_per_image_figure(figures: Mapping[str, Any]) -> go.Figure | None:
    obj = _find(figures, "boxes_per_image")
    if isinstance(obj, Mapping) and isinstance(obj.get("n_boxes"), list):
        x, y = obj["n_boxes"], obj.get("n_images", [])
    else:
        s = _columns(obj)
        if s.empty or "count" not in s.columns:
            return None
        x, y = list(s["class"]), list(s["count"])
    if not x:
        return None
    fig = go.Figure(go.Bar(x=x, y=y, marker_color="#1f5f8b"))
    unit = obj.get("unit", "boxes on the image") if isinstance(obj, Mapping) else "boxes on the image"
    fig.update_yaxes(type="log", title="images (log scale)")
    _layout(fig, "Boxes per image", height=360, xaxis_title=unit)
    return fig


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


def per_class_ap_figure(metrics: Mapping[str, Any]) -> go.Figure | None:
    df = per_class_ap_table(metrics)
    if df.empty:
        return None
    colours = ["#1f5f8b" if v == "yes" else "#b8c4cc" for v in df["Validated"]]
    fig = go.Figure(go.Bar(y=df["Class"], x=df["AP@0.4"].fillna(0), orientation="h", marker_color=colours,
                           text=[f"{v:.2f}" if not math.isnan(v) else "no test boxes" for v in df["AP@0.4"]],
                           textposition="outside", cliponaxis=False,
                           customdata=df["Test boxes"],
                           hovertemplate="%{y}: AP@0.4 %{x:.3f}<br>test boxes %{customdata}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(range=[0, 1.15], title="AP at IoU 0.4")
    _layout(fig, "Per-class AP on the test split (grey: too few test boxes to be validated)",
            height=max(360, 24 * len(df)))
    return fig


def headline_detector_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for key, label in (("map40", "mAP@0.4"), ("map50", "mAP@0.5"), ("tb_ap40", "TB AP@0.4")):
        v = _num(_get(metrics, key))
        if not math.isnan(v):
            out[label] = v
    return out


# --- diagnosis page helpers -------------------------------------------------------------------------


def format_probability(p: float) -> str:
    """Percent for display that never claims certainty: '>99%' / '<1%' at the extremes."""
    p = float(p)
    if p >= 0.995:
        return ">99%"
    if p < 0.005:
        return "<1%"
    return f"{p:.0%}"


def probability_figure(probabilities: Mapping[str, float], predicted: str | None = None,
                       abstained: bool = False) -> go.Figure:
    """Horizontal bars of the calibrated class probabilities (predicted class highlighted)."""
    classes = [c for c in settings.CLASSES if c in probabilities] or list(probabilities)
    vals = [float(probabilities[c]) for c in classes]
    colours = [
        ("#1f5f8b" if (c == predicted and not abstained) else "#b8c4cc") for c in classes
    ]
    fig = go.Figure(go.Bar(
        x=vals, y=[class_label(c) for c in classes], orientation="h", marker_color=colours,
        text=[format_probability(v) for v in vals], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    fig.update_xaxes(range=[0, 1.12], tickformat=".0%", title="calibrated probability")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=200, showlegend=False, template="plotly_white",
                      margin=dict(l=10, r=20, t=10, b=10), font=_LAYOUT["font"])
    return fig


def window_level(pixels: np.ndarray, brightness: float = 0.0, contrast: float = 1.0) -> np.ndarray:
    """Display window: level shifted by `brightness` (-0.5..0.5), width divided by `contrast` (>0).

    pixels: float [0, 1] (H, W). Returns uint8 (H, W). brightness 0 / contrast 1 is the identity.
    """
    p = np.asarray(pixels, dtype=np.float32)
    centre = 0.5 - float(brightness)
    width = 1.0 / max(float(contrast), 1e-3)
    lo = centre - width / 2.0
    out = (p - lo) / width
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


# Window presets on the display scale (0 = darkest, 1 = brightest value of the film as decoded):
# the decoded image carries no stored WindowCenter/Width or Hounsfield-like units (io.ImageMeta).
WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "Full range": (0.5, 1.0),
    "Lung": (0.35, 0.70),         # spreads the dark (air-filled) half: vessels and fine lung markings
    "Mediastinum": (0.65, 0.50),  # spreads the bright half: heart, spine, tubes and lines
    "Auto (1-99 % of pixels)": None,
}


def auto_window(pixels: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> tuple[float, float]:
    """(centre, width) covering the 1st..99th percentile of the film's pixel values."""
    p = np.asarray(pixels, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(p, [lo_pct, hi_pct]))
    width = max(hi - lo, 1e-3)
    return (lo + hi) / 2.0, width


def window_from_sliders(brightness: float, contrast: float) -> tuple[float, float]:
    """(centre, width) on the display scale for the viewer's brightness / contrast sliders."""
    return 0.5 - float(brightness), 1.0 / max(float(contrast), 1e-3)


def sliders_from_window(centre: float, width: float) -> tuple[float, float]:
    """Inverse of `window_from_sliders`, clamped to the sliders' ranges (-0.5..0.5, 0.5..4)."""
    brightness = min(max(0.5 - float(centre), -0.5), 0.5)
    contrast = min(max(1.0 / max(float(width), 1e-3), 0.5), 4.0)
    return round(brightness, 2), round(contrast * 20) / 20


def invert(gray: np.ndarray) -> np.ndarray:
    return (255 - np.asarray(gray, dtype=np.uint8)).astype(np.uint8)


HEATMAP_COLOURSCALE = "Jet"  # matches explain.overlay's default OpenCV 'jet' colormap


def heatmap_legend_figure(method_label: str, target_label: str | None = None) -> go.Figure:
    """A colour-scale bar for the heatmap overlay: blue = little, red = most influence on the score."""
    ticks = [0.03, 0.5, 0.97]  # just inside the range: plotly drops labels that sit on its edges
    fig = go.Figure(go.Heatmap(z=[np.linspace(0, 1, 101)], x=np.linspace(0, 1, 101), y=[0],
                               colorscale=HEATMAP_COLOURSCALE, showscale=False, zmin=0, zmax=1,
                               hoverinfo="skip"))
    what = f" for {target_label}" if target_label else ""
    fig.update_xaxes(tickvals=ticks, ticktext=["0 (none)", "0.5", "1 (strongest)"], range=[0, 1],
                     ticks="outside",
                     title=f"{method_label} relevance{what} (faint areas are left transparent)")
    fig.update_yaxes(visible=False)
    fig.update_layout(height=90, template="plotly_white", margin=dict(l=40, r=70, t=5, b=50),
                      font=_LAYOUT["font"])
    return fig


def _png_data_uri(rgb: np.ndarray) -> str:
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise ValueError("could not encode the image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def viewer_figure(panels: Mapping[str, np.ndarray], spacing_mm: tuple[float, float] | None = None) -> go.Figure:
    """The film (and its overlay) as plotly images side by side with linked axes: mouse-wheel zoom and
    drag-pan move both panels together. Axes in pixels; hover shows the position in mm when the pixel
    spacing is known."""
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.02,
                        shared_xaxes="all", shared_yaxes="all")
    for j, name in enumerate(names, start=1):
        rgb = panels[name]
        h, w = rgb.shape[:2]
        fig.add_trace(go.Image(source=_png_data_uri(rgb), name=name, hoverinfo="x+y",
                               hovertemplate=("x %{x} px, y %{y} px" + (
                                   f"<br>{spacing_mm[1]:.3f} x {spacing_mm[0]:.3f} mm per px" if spacing_mm else "")
                                   + f"<extra>{name}</extra>")), row=1, col=j)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_annotations(y=0.0, yanchor="top", yshift=-4)  # panel names under the images, clear of the toolbar
    h, w = next(iter(panels.values())).shape[:2]
    panel_width = 560 / len(names)  # the viewer column is about 560 px wide at a 1400 px window
    fig.update_layout(height=int(min(900, max(300, panel_width * h / max(w, 1) + 70))), dragmode="pan",
                      template="plotly_white", margin=dict(l=0, r=0, t=34, b=30), font=_LAYOUT["font"],
                      uirevision="viewer")
    return fig


def to_rgb(gray: np.ndarray) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim == 3:
        return g[..., :3].astype(np.uint8)
    if g.dtype != np.uint8:
        g = np.clip(np.rint(g * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _resize(arr: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if arr.shape[:2] == tuple(shape):
        return arr
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interp)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 255),
                 thickness: int | None = None) -> np.ndarray:
    """Draw the contour of a boolean mask (resized to the image) onto a copy of an RGB image."""
    import cv2

    m = _resize(np.asarray(mask, dtype=np.uint8), rgb.shape[:2], nearest=True)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(rgb.copy())
    t = thickness or max(1, round(max(rgb.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, colour, t, lineType=cv2.LINE_AA)
    return out


def box_scale(image: Any) -> tuple[float, float]:
    """(displayed / original) pixel ratio for drawing detector boxes (given in original pixels)."""
    ow, oh = getattr(getattr(image, "meta", None), "original_size", (image.width, image.height))
    return image.width / max(ow, 1), image.height / max(oh, 1)


def zoom(rgb: np.ndarray, factor: float = 1.0, cx: float = 0.5, cy: float = 0.5) -> np.ndarray:
    """Crop a window of 1/factor of the image around the relative centre (cx, cy), kept inside the image."""
    factor = max(1.0, float(factor))
    if factor == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    ch, cw = max(8, int(round(h / factor))), max(8, int(round(w / factor)))
    y0 = int(round(cy * h - ch / 2))
    x0 = int(round(cx * w - cw / 2))
    y0 = min(max(0, y0), h - ch)
    x0 = min(max(0, x0), w - cw)
    crop = rgb[y0:y0 + ch, x0:x0 + cw]
    return _resize(crop, (h, w))


def filter_boxes(boxes: Iterable[Any], conf: float = 0.0, classes: Iterable[str] | None = None) -> list[Any]:
    keep = set(classes) if classes is not None else None
    return [b for b in boxes if float(b.confidence) >= conf and (keep is None or b.label in keep)]


NORMAL_SCOPE_NOTE = settings.NORMAL_SCOPE_NOTE  # the page's wording lives in settings
AGE_SCOPE_NOTE = settings.AGE_SCOPE_NOTE


WORKLIST_COLUMNS = ("File", "Quality", "Result", "Confidence", "Leaning (not an answer)", "Age group",
                    "Notes")


def worklist_row(name: str, quality: Any = None, prediction: Any = None, error: str | None = None) -> dict[str, str]:
    """One line of the Diagnose page's worklist overview: what a reader needs to triage the list.

    On an abstained row the class the model leaned to is given in its own column, marked as not an
    answer; "Notes" holds every reason and quality remark in full.
    """
    lean = "Leaning (not an answer)"
    row = {c: "" for c in WORKLIST_COLUMNS} | {"File": name}
    if error:
        return row | {"Result": "not analysed", "Notes": error}
    notes: list[str] = []
    if quality is not None:
        row["Quality"] = {"pass": "pass", "warn": "check", "fail": "not suitable"}.get(str(quality.verdict), str(quality.verdict))
        notes += [str(r) for r in (getattr(quality, "reasons", None) or [])]
    if prediction is None:
        return row | {"Result": "no model", "Notes": " ".join(notes + ["No trained classifier is selected."])}
    notes = [str(r) for r in (prediction.reasons or [])] + notes
    probs = dict(getattr(prediction, "probabilities", None) or {})
    leaning = max(probs, key=probs.get) if probs else prediction.predicted
    return row | {
        "Result": "abstained" if prediction.abstained else class_label(prediction.predicted),
        "Confidence": format_probability(prediction.confidence),
        lean: (f"{class_label(leaning)} ({format_probability(probs.get(leaning, prediction.confidence))}) — not an answer"
               if prediction.abstained and leaning else ""),
        "Age group": settings.AGE_GROUP_LABELS.get(prediction.age_group or "", "not given"),
        "Notes": " ".join(notes),
    }


def worklist_csv(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The worklist overview (all rows, as shown) as CSV bytes, built in memory."""
    df = pd.DataFrame(list(rows))
    return df.to_csv(index=False).encode("utf-8")


def heatmap_caption(heat: Any) -> str:
    """What a heatmap shows (and does not), with the share of it inside the lungs when known."""
    from cxr_core.explain import METHODS

    text = (f"Heatmap ({METHODS[heat.method][1]}) for **{class_label(heat.target)}**: warm colours mark the "
            "regions that most raised this class's score. It shows where the model looked, not where disease is.")
    if heat.lung_fraction is not None:
        text += f" {heat.lung_fraction:.0%} of the highlight lies inside the lungs."
    return text


def sanity_note(sanity: Mapping[str, Any] | None, method: str) -> tuple[str, str]:
    """(level, text) about the sanity check of the heatmap method shown: 'warning' when it failed,
    'info' when this method was never checked, 'ok' when it passed. `sanity` must be that method's own
    result (`explain.sanity_result(model, method)`); a check of another method says nothing here."""
    from cxr_core.explain import METHODS

    label = METHODS[method][1] if method in METHODS else str(method)
    if not sanity or (sanity.get("method") not in (None, method)):
        return "info", (f"Heatmap sanity check: not checked for {label}. Nobody has tested whether {label} maps of "
                        "this model depend on what it learned; treat them as a rough hint.")
    passed = sanity.get("passed") or {}
    n = sanity.get("n_images")
    if passed and all(passed.values()):
        return "ok", f"{label} passed the heatmap sanity checks ({n} test images)."
    failed = ", ".join(k.replace("_", " ") for k, ok in passed.items() if not ok) or "no result"
    return "warning", (f"{label} heatmaps of this model failed a sanity check ({failed}; {n} test images, "
                       f"{label}): treat them as a rough hint only.")


def sanity_warning(sanity: Mapping[str, Any] | None, method: str | None = None) -> str | None:
    """The warning text when the shown method's heatmaps failed a sanity check, else None."""
    level, text = sanity_note(sanity, method or str((sanity or {}).get("method") or ""))
    return text if level == "warning" else None


def boxes_table(boxes: Iterable[Any]) -> pd.DataFrame:
    rows = [{
        "Finding": b.label,
        "Confidence": round(float(b.confidence), 3),
        "Validated": "yes" if getattr(b, "validated", False) else "not validated",
        "Box (x0, y0, x1, y1)": f"{b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f}",
    } for b in boxes]
    return pd.DataFrame(rows, columns=["Finding", "Confidence", "Validated", "Box (x0, y0, x1, y1)"])


def clinical_metadata(meta: Any, include_identifiers: bool = False) -> dict[str, str]:
    """The parts of ImageMeta a clinician cares about, formatted; identifiers only on request."""
    out: dict[str, str] = {}
    fmt = getattr(meta, "format", None)
    if fmt:
        out["Format"] = str(fmt)
    if getattr(meta, "modality", None):
        out["Modality"] = str(meta.modality)
    out["View"] = str(getattr(meta, "view_position", None) or "not stated")
    size = getattr(meta, "original_size", None)
    if size:
        out["Size (w x h)"] = f"{size[0]} x {size[1]} px"
    spacing = getattr(meta, "pixel_spacing", None)
    if spacing:
        out["Pixel spacing"] = f"{spacing[0]:.3f} x {spacing[1]:.3f} mm"
    if getattr(meta, "bit_depth", None):
        out["Bit depth"] = f"{meta.bit_depth}-bit"
    if getattr(meta, "photometric", None):
        out["Photometric"] = str(meta.photometric)
    if getattr(meta, "downscaled", False):
        out["Note"] = f"downscaled to {settings.WORKING_SIDE} px (long side) for processing"
    if include_identifiers:
        for k, v in (getattr(meta, "identifiers", None) or {}).items():
            out[readable_tag(k)] = str(v)  # as stored (the banner formats the few it shows)
    return out


DICOM_FIELD_NAMES = {
    "PatientName": "Patient name", "PatientID": "Patient ID", "PatientBirthDate": "Birth date",
    "PatientSex": "Sex", "PatientAge": "Age", "OtherPatientIDs": "Other patient IDs",
    "AccessionNumber": "Accession number", "StudyInstanceUID": "Study UID", "SeriesInstanceUID": "Series UID",
    "SOPInstanceUID": "Instance UID", "StudyDate": "Study date", "StudyTime": "Study time",
    "InstitutionName": "Institution", "ReferringPhysicianName": "Referring physician",
}


def readable_tag(keyword: str) -> str:
    """'PatientName' -> 'Patient name' (unknown keywords split at capitals)."""
    if keyword in DICOM_FIELD_NAMES:
        return DICOM_FIELD_NAMES[keyword]
    import re

    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(keyword)).split()
    return " ".join([words[0]] + [w.lower() for w in words[1:]]) if words else str(keyword)


def format_dicom_value(keyword: str, value: Any) -> str:
    """Dates as YYYY-MM-DD, person names 'Family^Given' as 'Family, Given', times as HH:MM."""
    v = str(value)
    if keyword.endswith("Date") and len(v) == 8 and v.isdigit():
        return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    if keyword.endswith("Time") and len(v) >= 4 and v[:4].isdigit():
        return f"{v[:2]}:{v[2:4]}"
    if keyword.endswith("Name") and "^" in v:
        return ", ".join(p for p in v.split("^") if p)
    if keyword == "PatientSex":
        return {"F": "female", "M": "male", "O": "other"}.get(v.upper(), v)
    return v


def patient_banner(meta: Any, include_identifiers: bool) -> dict[str, str]:
    """Name, patient ID, sex, age band, study date and view for a DICOM, only when identifiers are on."""
    ids = getattr(meta, "identifiers", None) or {}
    if not include_identifiers or not ids:
        return {}
    out = {readable_tag(k): format_dicom_value(k, ids[k]) for k in ("PatientName", "PatientID", "PatientSex")
           if ids.get(k)}
    if getattr(meta, "age_group", None):
        out["Age band"] = settings.AGE_GROUP_LABELS.get(meta.age_group, meta.age_group)
    if ids.get("StudyDate"):
        out["Study date"] = format_dicom_value("StudyDate", ids["StudyDate"])
    out["View"] = str(getattr(meta, "view_position", None) or "not stated")
    return out


def safe_load(data: bytes, filename: str | None, include_identifiers: bool = False) -> tuple[Any, str | None]:
    """(CXRImage, None) or (None, user-facing message). Never raises; never touches the disk."""
    try:
        from cxr_core.io import ImageLoadError, load_image
    except Exception:  # pragma: no cover - io is part of the skeleton
        return None, "The image reader is not available in this installation."
    try:
        return load_image(bytes(data), filename, include_identifiers=include_identifiers), None
    except ImageLoadError as exc:
        return None, str(exc)
    except Exception:
        return None, "The file could not be processed because of an unexpected error. Try another file."


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
    print(markdown_table(comparison_table(cards).drop(columns=["Status"])))
    print("\n### Per source / age group (test split)\n")
    print(markdown_table(per_group_table(cards)))
    pairs = ablation_pairs(cards)
    if pairs:
        print("\n### Ablation: lung crop (shipped model beside a run on images cropped to the segmented lungs)")
    for pair in pairs.values():
        print("\n" + markdown_table(ablation_table(pair)))
        print("\n" + (ablation_choice(pair) or ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
