"""Detector & data: the VinBigData / TBX11K box data and the detector's measured quality."""

from __future__ import annotations

import streamlit as st

from cxr_core import dashboard, settings
from cxr_core.detect import operating
from pages._common import chart, ensure_navigation

ensure_navigation()

st.title("Abnormality detector & data")
files = dashboard.load_detector_files()
card, metrics, figures = files["card"], files["metrics"], files["figures"]

st.caption(
    "The detector draws boxes for 14 VinBigData findings and two TBX11K tuberculosis classes. "
    "It is a **research preview**: it was trained on a small public subset, so its boxes are hints, not findings."
)

if not any(files.values()):
    st.info(
        "No detector results yet (`weights/detector.json`, `detector_metrics.json` and `detector_figures.json` are "
        "missing). Train and evaluate with `python -m cxr_core.detection train`.",
        icon=":material/info:",
    )
    st.stop()

n_images = dashboard.detector_n_images(card, figures)
head = dashboard.headline_detector_metrics(metrics)
cols = st.columns(1 + len(head))
cols[0].metric("Training images", f"{n_images:,}" if n_images is not None else "n/a")
for col, (label, value) in zip(cols[1:], head.items()):
    col.metric(label, f"{value:.3f}")
counts = dashboard.detector_data_counts(card)
by_source = "; ".join(
    f"{src}: " + ", ".join(f"{n:,} {split}" for split, n in per.items()) for src, per in counts.items()
)
st.warning(
    f"Data size: the detector is a {dashboard.detector_label(card, figures)}"
    + (f" ({by_source} images)" if by_source else "")
    + ". Classes with too few test examples to measure accuracy are marked *not validated* here and on the "
    "Diagnose page.",
    icon=":material/science:",
)

st.subheader("Default box threshold (operating point)")
op = operating.operating_point(card)
if op is None:
    st.info(
        "The default box threshold is the best-F1 point on TB-positive films only: how many boxes it draws on "
        "healthy chests has not been measured. Run `python -m cxr_core detect operating-point` to measure it.",
        icon=":material/info:",
    )
else:
    split = op.get("chosen_on", "val")
    at = op.get(split) or {}
    fp = at.get("tb_fp_per_normal_film") or {}

    def _fmt(x, nd=2):
        return f"{float(x):.{nd}f}" if isinstance(x, (int, float)) else "n/a"

    c = st.columns(5)
    c[0].metric("Threshold", _fmt(op["threshold"]))
    c[1].metric("TB precision", _fmt(at.get("tb_precision")), help="Share of TB boxes on TB films that overlap a "
                "radiologist's TB lesion (IoU at least 0.5), validation films.")
    c[2].metric("TB recall", _fmt(at.get("tb_recall")), help="Share of radiologists' TB lesions the boxes find.")
    c[3].metric("TB boxes / Normal film (adult)", _fmt(fp.get("adult"), 3),
                help="Every TB box on a film labelled Normal is a false positive.")
    c[4].metric("TB boxes / Normal film (child)", _fmt(fp.get("paediatric"), 3))
    st.info(op.get("meaning") or operating.meaning_text(op, split), icon=":material/target:")
    ci = at.get("tb_fp_per_normal_film_ci95") or {}
    ci_text = "; ".join(f"{label} {_fmt(v[0], 3)}-{_fmt(v[1], 3)}" for key, label in
                        (("adult", "adult"), ("paediatric", "child")) if isinstance(v := ci.get(key), list))
    n = at.get("normal_films") or {}
    st.caption(
        f"Rule: {op.get('rule', 'lowest threshold meeting both targets')} ({split} split, "
        f"{n.get('adult', '?')} adult and {n.get('paediatric', '?')} children's Normal films, {at.get('tb_films', '?')} "
        f"TB films). {op.get('note', '')} The Diagnose page starts its box slider here."
        + (f" 95 % interval of TB boxes per Normal film: {ci_text}." if ci_text else "")
    )
    test = op.get("test") or {}
    if test:
        tfp = test.get("tb_fp_per_normal_film") or {}
        st.caption(
            f"Test split at the same threshold: TB precision {_fmt(test.get('tb_precision'))}, recall "
            f"{_fmt(test.get('tb_recall'))}, TB boxes per Normal film {_fmt(tfp.get('adult'), 3)} (adult) and "
            f"{_fmt(tfp.get('paediatric'), 3)} (child)."
        )
    other = op.get("tb_boxes_on_other_labels") or {}
    share = other.get("films_with_tb_box") or {}
    if share.get("covid") is not None:
        st.caption(
            f"On cxr3 films labelled COVID-19, {100 * float(share['covid']):.0f} % carried a TB box at this threshold "
            f"(viral pneumonia: {100 * float(share.get('viral_pneumonia') or 0):.0f} %). TB was not ruled out on "
            "those films, so these boxes are not proven false, but the classifier cannot weigh them: read a TB box "
            "beside a COVID-19 suggestion as a separate question."
        )
    prev = op.get("at_previous_threshold") or {}
    if prev.get(split):
        pfp = prev[split].get("tb_fp_per_normal_film") or {}
        st.caption(
            f"At the earlier default {_fmt(prev.get('threshold'), 3)} (best F1 on TB films) it drew "
            f"{_fmt(pfp.get('adult'))} (adult) and {_fmt(pfp.get('paediatric'))} (child) TB boxes per Normal film."
        )
    rows = operating.operating_point_table(op)
    if rows:
        with st.expander("Precision, recall and boxes per Normal film at other thresholds"):
            st.dataframe(rows, hide_index=True)
            st.caption("VinBigData columns: " + str(op.get("vinbig_note", operating.VINBIG_NOTE)) + ". "
                       + str(op.get("precision_note", "")))


def _build(fn, *args):
    """(figure or None, failed?) without letting a malformed file raise."""
    try:
        return fn(*args), False
    except Exception:
        return None, True


if metrics:
    st.subheader("Per-class average precision")
    chart(dashboard.per_class_ap_figure, metrics, key="det_ap")
    try:
        st.table(dashboard.styled(dashboard.per_class_ap_table(metrics)))
    except Exception:
        st.warning("The per-class table could not be read from `detector_metrics.json`.")
    st.caption(f"A class counts as validated with at least {settings.DETECTOR_MIN_SUPPORT} test boxes.")
else:
    st.info("Detector metrics (`weights/detector_metrics.json`) are not available yet.")

if figures:
    if figures.get("n_images"):
        st.info(
            f"The figures below describe the full VinBigData annotation table ({figures['n_images']:,} images, "
            f"{figures.get('n_boxes', 0):,} radiologist boxes) plus TBX11K; only the images counted above were "
            "available to train the detector.",
            icon=":material/dataset:",
        )
    built = {name: _build(fn, figures) for name, fn in (
        ("labels", dashboard.label_distribution_figure), ("pva", dashboard.predicted_vs_actual_figure),
        ("area", dashboard.box_area_figure), ("bpi", dashboard.boxes_per_image_figure))}
    titles = {"labels": "Label distribution", "pva": "Predicted vs actual", "area": "Box size per class",
              "bpi": "Boxes per image"}
    ready = [k for k, (fig, _) in built.items() if fig is not None]
    # "Box size per class" gets the full width (one labelled box per class); the others go two per row.
    paired = [k for k in ready if k != "area"]
    rows = [paired[i:i + 2] for i in range(0, len(paired), 2)]
    if "area" in ready:
        rows.insert(1 if rows else 0, ["area"])
    for row in rows:
        for col, name in zip(st.columns(len(row)), row):
            with col:
                st.subheader(titles[name])
                st.plotly_chart(built[name][0], key=f"det_{name}", config={"displaylogo": False})
                if name == "pva":
                    note = operating.figure_threshold_note(figures, card)
                    if note:
                        st.caption(note)
    if any(failed for _, failed in built.values()):
        st.warning("Some figures could not be drawn from `detector_figures.json` (unexpected format).")
    agreement = dashboard.agreement_table(figures) if isinstance(figures.get("radiologist_agreement"), dict) else None
    if agreement is not None and not agreement.empty:
        st.subheader("Radiologist agreement")
        st.caption("How much the three VinBigData radiologists agreed with each other: the detector cannot be "
                   "expected to agree with a reader more than readers agree among themselves.")
        agreement = agreement[[c for c in agreement.columns if c != "class_id"]]
        st.table(dashboard.styled(agreement, 2))
    if not ready and (agreement is None or agreement.empty):
        st.info("The figures file holds no figure this page knows how to draw.")
else:
    st.info("Dataset figures (`weights/detector_figures.json`) are not available yet.")

limits = dashboard.detector_limits(card)
if limits:
    st.subheader("Known limits")
    st.markdown("\n".join(f"- {x}" for x in limits))
if card:
    with st.expander("Detector model card"):
        st.json(card, expanded=False)
