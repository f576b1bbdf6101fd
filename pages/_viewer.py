"""The Diagnose page's film viewer: window/level presets, invert, reset, and the film beside its layers.

Display only: nothing here changes what the model sees.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from cxr_core import dashboard
from pages._session import REVIEWED_STORE

def _apply_preset(pixels) -> None:
    """on_change of the window preset: move the level / window sliders to it."""
    name = st.session_state.get("dx_wl_preset")
    if name not in dashboard.WINDOW_PRESETS:
        return
    centre, width = dashboard.WINDOW_PRESETS[name] or dashboard.auto_window(pixels)
    st.session_state["dx_brightness"], st.session_state["dx_contrast"] = dashboard.sliders_from_window(centre, width)

def _reset_window() -> None:
    st.session_state.update(dx_brightness=0.0, dx_contrast=1.0, dx_invert=False, dx_wl_preset=None)

def remember_reviewed(digest: str) -> None:
    st.session_state.setdefault(REVIEWED_STORE, {})[digest] = bool(st.session_state.get(f"dx_reviewed_{digest[:16]}"))

def show_film(base, composite, interactive: bool, spacing) -> None:
    """The film, and beside it the film with its layers when one is on (same window, same zoom)."""
    layered = composite is not base
    caption = "Display only: window/level, invert and zoom do not change what the model sees."
    if interactive:
        film = {"Original": base, "With layers": composite} if layered else {"Film": base}
        st.plotly_chart(dashboard.viewer_figure(film, spacing), key="dx_viewer",
                        config={"scrollZoom": True, "displaylogo": False,
                                "modeBarButtonsToRemove": ["select2d", "lasso2d"]})
        st.caption(caption + " Wheel: zoom; drag: pan; double click: reset.")
    elif layered:
        c1, c2 = st.columns(2, gap="small")
        c1.image(base, width="stretch", caption="Original")
        c2.image(composite, width="stretch", caption="With layers")
        st.caption(caption)
    else:
        st.image(base, width="stretch", caption=caption)

def controls(pixels: np.ndarray) -> tuple[float, float, bool, bool]:
    """(brightness, contrast, inverted, interactive) from the viewer's widgets."""
    with st.expander(":material/tune: Viewer: window / level, invert, zoom", expanded=False):
        st.selectbox("Window preset", list(dashboard.WINDOW_PRESETS), index=None, key="dx_wl_preset",
                     placeholder="Choose a preset...", on_change=_apply_preset, args=(pixels,))
        v1, v2 = st.columns(2)
        brightness = v1.slider("Brightness (level)", -0.5, 0.5, 0.0, 0.01, key="dx_brightness")
        contrast = v2.slider("Contrast (window)", 0.5, 4.0, 1.0, 0.05, key="dx_contrast")
        w1, w2 = st.columns(2)
        inverted = w1.checkbox("Invert (bone dark)", value=False, key="dx_invert")
        w2.button("Reset window", key="dx_wl_reset", on_click=_reset_window, icon=":material/restart_alt:")
        centre, width = dashboard.window_from_sliders(brightness, contrast)
        st.caption(f"Current window: centre **{centre:.2f}**, width **{width:.2f}** on the display scale "
                   "(0 = darkest, 1 = brightest value of the decoded film). The decoder passes no stored "
                   "DICOM window or real units to the app, so presets work on this scale.")
    interactive = st.toggle("Zoom and pan (mouse wheel, drag)", value=False, key="dx_interactive",
                            help="An interactive view: the wheel zooms, dragging pans, a double click resets; "
                            "with a layer on, both panels move together.")
    return brightness, contrast, inverted, interactive
