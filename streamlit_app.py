"""Entry point: `streamlit run streamlit_app.py`. Navigation, page config and the shared sidebar only.

Every page lives in pages/ and every decision is made in cxr_core; see docs/app.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `streamlit run` adds it; AppTest and other launchers may not
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from cxr_core import settings  # noqa: E402
from pages._common import configure_torch, run_page  # noqa: E402

st.set_page_config(
    page_title="CXR decision support",
    page_icon=":material/radiology:",
    layout="wide",
    initial_sidebar_state="expanded",
    menu_items={"About": settings.DISCLAIMER},
)

PAGES = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/radiology:", default=True),
    st.Page("pages/compare.py", title="Model comparison", icon=":material/leaderboard:", url_path="compare"),
    st.Page("pages/detector.py", title="Detector & data", icon=":material/center_focus_strong:", url_path="detector"),
    st.Page("pages/pacs.py", title="PACS", icon=":material/dns:", url_path="pacs"),
    st.Page("pages/about.py", title="About & model cards", icon=":material/info:", url_path="about"),
]
configure_torch()
page = st.navigation(PAGES)

# Shared sidebar, drawn before the page runs so it shows even when a page stops early (st.stop).
with st.sidebar:
    st.markdown("### :material/radiology: CXR decision support")
    st.caption("COVID-19 / Normal / Viral pneumonia triage aid with explanations")
    st.warning(settings.DISCLAIMER, icon=":material/health_and_safety:")
    st.caption("Research prototype. Uploaded images stay in memory for this session only; nothing is stored.")

run_page(page)
