"""Plotly figures of the comparison and detector pages, drawn only from the cards' numbers: one shared
layout (titles below the toolbar, legends clear of the data), one colour per model and class.

No Streamlit here, so every number the app shows can be checked from a notebook or a test.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxr_core import settings
from cxr_core.ui.cards import _columns, _find, _get, _num, card_classes, class_label, display_name, label_distribution_table, per_class_ap_table, split_metrics, trained


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


def per_class_figure(cards: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> go.Figure:
    """Grouped bars: precision / recall / F1 per class, one colour per model."""
    metrics = ("precision", "recall", "f1")
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m.capitalize() if m != "f1" else "F1" for m in metrics],
                        shared_yaxes=True)
    classes = card_classes(cards)
    for name, card in trained(cards).items():
        pc = split_metrics(card, split).get("per_class") or {}
        for j, metric in enumerate(metrics, start=1):
            fig.add_trace(
                go.Bar(
                    x=[class_label(c) for c in classes],
                    y=[_num(_get(pc, c, metric)) for c in classes],
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
    labels = [class_label(c) for c in ((card or {}).get("classes") or settings.CLASSES)]  # the card's output order
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
    classes = card_classes(cards)
    fig = make_subplots(rows=1, cols=len(classes),
                        subplot_titles=[class_label(c) for c in classes], shared_yaxes=True)
    for name, card in trained(cards).items():
        m = split_metrics(card, split)
        for j, cls in enumerate(classes, start=1):
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
    for j in range(1, len(classes) + 1):
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
    classes = settings.ordered_classes(probabilities)
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
