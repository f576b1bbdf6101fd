"""Model comparison: V-BreathNet vs the transfer-learning baselines, read from weights/*.json only."""

from __future__ import annotations

import streamlit as st

from cxr_core import dashboard, explain, settings, stats
from cxr_core.ui import probes as probe_views
from pages._common import chart, ensure_navigation

ensure_navigation()

st.title("Model comparison")
st.caption(
    "Every number on this page is read from the model cards in `weights/*.json`, written by training and "
    "evaluation. Figures quoted from the V-BreathNet paper are kept in separate **Paper-reported** columns; "
    "**Measured here** columns are our own runs on the cxr3 data."
)

cards = dashboard.load_cards()
trained = dashboard.trained(cards)
missing = [dashboard.display_name(n) for n, c in cards.items() if not c]

if not trained:
    st.warning(
        "**No model has been trained yet**, so there is nothing to compare. Train with "
        "`python -m cxr_core.train --model NAME` (NAME in " + ", ".join(settings.CLASSIFIERS) + ").",
        icon=":material/model_training:",
    )
    st.table(dashboard.comparison_styler(dashboard.comparison_table(cards)))
    st.stop()

if missing:
    st.info("Not trained yet: " + ", ".join(missing) + ". They appear below as empty rows.", icon=":material/info:")

split = st.segmented_control("Evaluation split", ["test", "val"], default="test", key="cmp_split") or "test"

st.subheader("Summary")
table = dashboard.summary_table(cards, split)
st.table(dashboard.comparison_styler(table))
versus = dashboard.versus_statement(cards, split=split)
if versus:
    st.markdown(f"**{versus}**")
st.caption(
    "Params: PyTorch count (the paper counts Keras parameters, which include batch-norm statistics). "
    "ECE: expected calibration error after temperature scaling. Coverage: share of films the model answers "
    "at its abstention threshold (it abstains on the rest); accuracy on answered: accuracy on those films. "
    f"95 % CI: percentile bootstrap, {stats.N_BOOT:,} resamples of patient groups (all films of a patient drawn together, "
    "as they are not independent); intervals of coverage and accuracy on answered are computed on the test "
    "split. Latency: single-image CPU inference. "
    "Shaded columns are **Paper-reported**: measured by the paper's authors on their own data and split, "
    "so they are not directly comparable with ours. — = not available."
)
for note in dashboard.ci_notes(cards, split):
    st.info(note, icon=":material/info:")

devs = dashboard.deviations(cards)
if devs:
    with st.container(border=True):
        st.markdown(":material/warning: **Not faithful to the paper** — these models differ from the published setup:")
        for name, items in devs.items():
            st.markdown(f"**{name}**\n" + "\n".join(f"- {d}" for d in items))

st.subheader("Per-class precision, recall and F1")
chart(dashboard.per_class_figure, cards, split, key="cmp_per_class")

st.subheader("Confusion matrices")
items = list(trained.items())
for i in range(0, len(items), 2):  # two per row: large enough to read the counts
    for col, (name, card) in zip(st.columns(2), items[i:i + 2]):
        with col:
            chart(dashboard.confusion_figure, card, split, name, key=f"cmp_cm_{name}",
                  config={"displayModeBar": False})
st.caption("Rows: true class, columns: predicted class; each cell shows the count and the share of its row.")

st.subheader("ROC curves")
chart(dashboard.roc_figure, cards, split, key="cmp_roc")

c1, c2 = st.columns(2)
with c1:
    st.subheader("Training curves")
    chart(dashboard.training_curves_figure, cards, key="cmp_train")
with c2:
    st.subheader("Accuracy, size and speed")
    chart(dashboard.tradeoff_figure, cards, split, key="cmp_tradeoff")

st.subheader("Performance by source and age group")
st.warning(dashboard.GROUP_NOTE, icon=":material/diversity_3:")
groups = dashboard.per_group_table(cards, split)
if groups.empty:
    st.info("The model cards hold no per-group metrics yet.")
else:
    st.table(dashboard.styled(groups))
    st.caption("Recall per class within each group; — means the class does not occur in that group.")

st.subheader("Calibration")
for i in range(0, len(items), 2):  # two per row, square plots
    for col, (name, card) in zip(st.columns(2), items[i:i + 2]):
        with col:
            cal = card.get("calibration") or {}
            st.markdown(f"**{dashboard.display_name(name, card)}** · temperature T = "
                        f"{dashboard.format_temperature(cal.get('temperature'))} · abstain below "
                        f"{cal.get('abstain_threshold', settings.ABSTAIN_CONFIDENCE)}")
            chart(dashboard.reliability_figure, card, key=f"cmp_rel_{name}", config={"displayModeBar": False})

st.subheader("Ablations: input size and lung crop")
pairs = dashboard.ablation_pairs(cards)
if not pairs:
    st.info("No ablation runs in weights/ablations/ yet.")
for name, pair in pairs.items():
    st.markdown(f"**{dashboard.display_name(name, cards[name])}**: the shipped model beside runs that vary one "
                "factor, the input size (`--size`) or a crop of every image to the lung bounding box from the lung "
                "segmenter (`--lung-crop`). A warning below lists any other difference between the runs.")
    st.table(dashboard.styled(dashboard.ablation_table(pair)))
    choice = dashboard.ablation_choice(pair, probe_views.probes_for(pair))
    if choice:
        (st.warning if dashboard.ablation_mismatch(pair) else st.markdown)(choice)
    st.table(dashboard.comparison_styler(dashboard.summary_table(pair, split).drop(columns=["Status"])))
    st.table(dashboard.styled(dashboard.per_group_table(pair, split)))

st.subheader("Heatmap sanity checks")
sanity = {name: explain.sanity_result(name) for name in cards}
if not any(sanity.values()):
    st.info("No heatmap sanity results yet: `python -m cxr_core.explain sanity --n 30 --model NAME`.")
else:
    st.caption(dashboard.SANITY_NOTE)
    st.table(dashboard.styled(dashboard.sanity_table(sanity)))

st.subheader("What the models read: context-only and acquisition-shift probes")
probes = probe_views.load_probes()
if not probes:
    st.info("No probe results yet: `python -m cxr_core.evaluate --model NAME --split test --probes "
            "--out docs/probes/NAME.json`.")
else:
    st.caption(probe_views.PROBES_NOTE)
    st.table(dashboard.styled(probe_views.probe_table(probes)))
    for name, result in probes.items():
        for line in probe_views.readings(name, result):
            st.markdown(f"- {line}")
    st.markdown("Accuracy drop per shift (points of accuracy; positive = worse than the film as is):")
    st.table(dashboard.styled(probe_views.shift_table(probes)))
