"""About: intended use, data sources and licences, model cards, known confounds, how to retrain."""

from __future__ import annotations

import streamlit as st

from cxr_core import dashboard, settings
from pages._common import ensure_navigation

ensure_navigation()

st.title("About this tool")

st.header("Intended use")
st.markdown(
    f"""
**{settings.DISCLAIMER}**

- **What it does.** For a single frontal chest radiograph it suggests one of three classes
  (COVID-19, Normal, Viral pneumonia) with a calibrated confidence, shows where the classifier looked (heatmap),
  and can draw research-preview boxes for 14 radiological findings and tuberculosis.
- **Who it is for.** Clinicians and researchers who want a second look or a triage hint, *together with*
  the clinical picture, prior imaging and a radiologist's read.
- **What it is not.** It is not a certified medical device and must not be used on its own to diagnose, rule out
  disease or decide treatment. It knows only three classes; bacterial pneumonia, tuberculosis, effusion,
  cancer and other diseases are either forced into one of them or cause an abstention.
- **When it abstains.** If the image fails the quality check (including a DICOM header that says CT, lateral
  view and the like), if the calibrated confidence is below the model's threshold, or if the call lies outside
  the patients the model learned it from (viral pneumonia only from children aged 1-5, COVID-19 only from
  adults: give the age group in the sidebar), no class is suggested. This is deliberate.
- **Privacy.** Uploaded images are processed in memory for your session only and are never written to disk or logs.
  DICOM patient identifiers are hidden unless you ask to see them.
"""
)

st.header("Known confounds")
confounds = dashboard.readme_section(settings.CXR3_DIR / "README.md", "Known confounds")
st.warning(
    "The classifier's training data has strong shortcuts. High accuracy below may partly reflect hospital, "
    "scanner and patient age rather than disease.",
    icon=":material/warning:",
)
if confounds:
    st.markdown(confounds)
else:
    st.markdown(
        "- Viral pneumonia images are all paediatric (Kermany, Guangzhou); COVID-19 images are all adult.\n"
        "- Each class comes from a different mix of sources, so hospital and scanner style correlate with the label.\n"
        "- Do not claim adult viral pneumonia performance from this data."
    )

st.header("Data sources, licences and attribution")
SOURCES = [
    ("cxr3 — classifier data (COVID-19 / Normal / Viral pneumonia)", settings.CXR3_DIR),
    ("VinBigData / VinDr-CXR — detector data", settings.VINBIG_DIR),
    ("TBX11K — tuberculosis boxes", settings.DATA_DIR / "cxr_boxes"),
    ("Lung masks — segmentation data", settings.LUNGSEG_DIR),
]
FALLBACK = {
    "cxr3": "COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021): research / non-commercial use "
            "with citation. Kermany et al., Mendeley Data doi:10.17632/rscbjbr9sj.2 (Cell 2018): CC BY 4.0.",
    "vinbigdata": "VinDr-CXR (Nguyen et al., Scientific Data 2022): research and educational use only.",
    "cxr_boxes": "TBX11K (Liu et al., CVPR 2020): research use; cite the paper.",
    "lungseg": "Masks CC BY 4.0 (GeneralBlockchain; V7 Labs). Images: ieee8023 COVID-19 image data collection "
               "(Cohen et al. 2020), licences vary per image; research / non-commercial use.",
}
for title, folder in SOURCES:
    with st.expander(title):
        text = dashboard.readme_section(folder / "README.md", "Licen")
        st.markdown(text or FALLBACK.get(folder.name, "See the dataset's README."))
        limits = dashboard.readme_section(folder / "README.md", "Known limitations") or \
            dashboard.readme_section(folder / "README.md", "What is missing")
        if limits:
            st.markdown("**Limitations**\n\n" + limits)

st.header("Model cards")
cards = dashboard.load_cards()
for name, card in cards.items():
    label = dashboard.display_name(name, card)
    if not card:
        st.markdown(f"- **{label}** — {dashboard.NOT_TRAINED}.")
        continue
    badge = "" if dashboard.is_faithful(card) else " · not faithful to the paper"
    with st.expander(f"{label}{badge}"):
        st.dataframe(dashboard.card_summary(name, card), hide_index=True)
        if card.get("deviations"):
            st.markdown("**Deviations from the paper**\n" + "\n".join(f"- {d}" for d in card["deviations"]))
        if card.get("known_limits"):
            st.markdown("**Known limits**\n" + "\n".join(f"- {d}" for d in card["known_limits"]))
        st.markdown("**Full card**")
        st.json(card, expanded=False)
det = dashboard.load_detector_files()["card"]
if det:
    with st.expander(f"Abnormality detector · {dashboard.detector_label(det)}"):
        st.json(det, expanded=False)
else:
    st.markdown(f"- **Abnormality detector** — {dashboard.NOT_TRAINED}.")

st.header("How to retrain")
st.markdown(
    "Models are trained and evaluated from the command line; the app only reads `weights/`. "
    "Every command writes its model card next to the weights, and this app picks it up on the next page load."
)
st.code(
    "\n".join(
        [
            "# classifiers (NAME: " + ", ".join(settings.CLASSIFIERS) + ")",
            "python -m cxr_core.train --model vbreathnet",
            "python -m cxr_core.evaluate --model vbreathnet",
            "# evaluate on your own images (one sub-folder per class: covid/, normal/, viral_pneumonia/)",
            "python -m cxr_core.evaluate --model vbreathnet --data /path/to/folder",
            "",
            "# abnormality detector (VinBigData + TBX11K); `prepare --kaggle DIR` uses a full Kaggle download",
            "python -m cxr_core.detection prepare",
            "python -m cxr_core.detection train",
            "",
            "# lung segmenter (U-Net)",
            "python -m cxr_core segment train",
            "",
            "# the app",
            "streamlit run streamlit_app.py",
        ]
    ),
    language="bash",
)
