"""Helpers shared by the pages: process-wide model caches, navigation and small layout pieces.

Models are loaded once per server process (st.cache_resource); a page that finds no trained
weights says so plainly instead of loading anything.
"""

from __future__ import annotations

import threading
from typing import Any

import streamlit as st


@st.cache_resource(show_spinner=False)
def configure_torch() -> None:
    """One thread count for the whole server (settings.TORCH_THREADS), set once per process."""
    import torch

    from cxr_core import settings

    torch.set_num_threads(settings.TORCH_THREADS)


@st.cache_resource(show_spinner="Loading the classifier...")
def get_classifier(name: str, backend: str = "torch") -> Any:
    """The classifier on PyTorch or ONNX Runtime (`cxr_core.export.backend.load`; a stale or missing
    ONNX file raises with a message saying how to export it)."""
    from cxr_core.export.backend import load

    return load(name, backend)


@st.cache_resource(show_spinner="Loading the abnormality detector...")
def get_detector() -> Any:
    from cxr_core import detect

    return detect.load_detector()


@st.cache_resource(show_spinner="Loading the lung segmenter...")
def get_segmenter() -> Any:
    from cxr_core import segment

    return segment.load_segmenter()


def classifier_status() -> tuple[list[str], dict[str, str]]:
    """(names with trained weights, display name per known classifier)."""
    from cxr_core import settings

    try:
        from cxr_core.models import SPECS, available_classifiers

        names = {n: SPECS[n].display_name for n in settings.CLASSIFIERS if n in SPECS}
        return list(available_classifiers()), names
    except Exception:
        return [], {n: n for n in settings.CLASSIFIERS}


def limits_box(card: dict | None, title: str = "Known limits of this model", expanded: bool = True) -> None:
    """The 'decision support' reminder plus the model card's known limits, next to a result."""
    from cxr_core import settings

    limits = list((card or {}).get("known_limits") or [])
    with st.expander(f":material/report: {title}", expanded=expanded):
        st.markdown(f"**{settings.DISCLAIMER}**")
        if limits:
            st.markdown("\n".join(f"- {lim}" for lim in limits))
        else:
            st.markdown("- The model card lists no specific limits; see the About page for the data's confounds.")


_RUN = threading.local()  # .via_main is True while streamlit_app.py runs a page in this thread


def run_page(page: Any) -> None:
    """Run the selected st.navigation page, marking this thread as 'inside the main script'."""
    _RUN.via_main = True
    try:
        page.run()
    finally:
        _RUN.via_main = False


def ensure_navigation() -> None:
    """Make a deep link (e.g. /compare) on a freshly started server go through streamlit_app.py.

    Streamlit treats an app with a `pages/` folder as a legacy multipage app until the first
    `st.navigation` call in the process; until then a deep link runs the page file on its own
    (no page config, a raw file list as navigation). Each page calls this first: in that legacy
    state it switches the process to `st.navigation` mode and reruns through the main script.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except Exception:  # internal API moved: the worst case is the legacy look on the first visit
        return
    if getattr(_RUN, "via_main", False):  # normal case: streamlit_app.py called st.navigation
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def chart(build: Any, *args: Any, key: str, config: dict | None = None, **kwargs: Any) -> bool:
    """Draw the plotly figure returned by build(*args, **kwargs); a malformed JSON file gives a short
    warning instead of an exception. Returns False when there was nothing to draw."""
    try:
        fig = build(*args, **kwargs)
    except Exception:
        st.warning("This figure could not be drawn from the JSON files in weights/ (unexpected format).",
                   icon=":material/warning:")
        return False
    if fig is None:
        return False
    st.plotly_chart(fig, key=key, config=config or {"displaylogo": False})
    return True
