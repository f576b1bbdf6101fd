"""The Diagnose page's film viewer: window/level presets in the file's real units, invert, reset, a distance
measurement, and the film beside its layers.

Display only: nothing here changes what the model sees. The numbers come from `cxr_core.ui.viewer`
(pure functions, tested without Streamlit); this module only holds the widgets and session state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from cxr_core import dashboard
from cxr_core.ui import viewer as wl
from pages._session import REVIEWED_STORE

# The exact window of the last preset chosen. The sliders round (0.01 / 0.05 steps) and clamp (width
# 0.25..2), which would move a header window off its stated C / W; while the sliders still sit where the
# preset put them, the film is shown with the exact window instead. Tied to the film it was chosen on.
_EXACT = "dx_wl_exact"
_MEASURE_KEYS = ("dx_m_x0", "dx_m_y0", "dx_m_x1", "dx_m_y1")


def _fingerprint(pixels: np.ndarray, meta: Any) -> tuple:
    """Cheap identity of a film (a worklist switches films under the same widgets)."""
    p = np.asarray(pixels)
    return (p.shape, float(p[::61, ::59].sum(dtype=np.float64)), getattr(meta, "value_range", None),
            tuple(getattr(meta, "window_presets", ()) or ()))


def _apply_preset(pixels: np.ndarray, meta: Any = None) -> None:
    """on_change of the window preset: move the level / window sliders to it, and keep it exact."""
    name = st.session_state.get("dx_wl_preset")
    window = wl.preset_window(name, pixels, meta) if name else None
    if window is None:
        st.session_state.pop(_EXACT, None)
        return
    sliders = dashboard.sliders_from_window(*window)
    st.session_state["dx_brightness"], st.session_state["dx_contrast"] = sliders
    st.session_state[_EXACT] = {"film": _fingerprint(pixels, meta), "levels": wl.levels_from_window(*window),
                                "sliders": sliders}


def _manual_window() -> None:
    """on_change of a slider: the window is the user's own now, no longer the preset's."""
    st.session_state.pop(_EXACT, None)
    st.session_state["dx_wl_preset"] = None


def _reset_window() -> None:
    st.session_state.pop(_EXACT, None)
    st.session_state.update(dx_brightness=0.0, dx_contrast=1.0, dx_invert=False, dx_wl_preset=None)


def remember_reviewed(digest: str) -> None:
    st.session_state.setdefault(REVIEWED_STORE, {})[digest] = bool(st.session_state.get(f"dx_reviewed_{digest[:16]}"))


def _scale(base: np.ndarray, meta: Any) -> tuple[float, float]:
    """(displayed / original) pixel ratio: io downscales large films, so mm need the file's size."""
    h, w = base.shape[:2]
    ow, oh = getattr(meta, "original_size", None) or (w, h)
    return w / max(int(ow), 1), h / max(int(oh), 1)


def _measurement(base: np.ndarray, spacing, meta: Any) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Two points typed in original-image pixels -> the line in displayed pixels (None when off), and the
    distance under it: mm only with a known pixel spacing, pixels otherwise."""
    h, w = base.shape[:2]
    ow, oh = (int(v) for v in (getattr(meta, "original_size", None) or (w, h)))
    with st.expander(":material/straighten: Measure a distance", expanded=False):
        on = st.toggle("Show a measurement line", value=False, key="dx_measure",
                       help="Two points in the original image's pixels (x to the right, y down).")
        if not on:
            return None
        defaults = dict(zip(_MEASURE_KEYS, (ow // 4, oh // 2, (3 * ow) // 4, oh // 2)))
        limits = dict(zip(_MEASURE_KEYS, (ow - 1, oh - 1, ow - 1, oh - 1)))
        for key in _MEASURE_KEYS:  # keep values typed for a larger film inside this one
            st.session_state.setdefault(key, defaults[key])
            st.session_state[key] = int(min(max(int(st.session_state[key]), 0), limits[key]))
        cols = st.columns(4)
        x0 = cols[0].number_input("x₀ (px)", min_value=0, max_value=ow - 1, step=1, key="dx_m_x0")
        y0 = cols[1].number_input("y₀ (px)", min_value=0, max_value=oh - 1, step=1, key="dx_m_y0")
        x1 = cols[2].number_input("x₁ (px)", min_value=0, max_value=ow - 1, step=1, key="dx_m_x1")
        y1 = cols[3].number_input("y₁ (px)", min_value=0, max_value=oh - 1, step=1, key="dx_m_y1")
        # distance_mm takes displayed-image points and the display scale: the same path as a drawn line
        sx, sy = _scale(base, meta)
        p0, p1 = (x0 * sx, y0 * sy), (x1 * sx, y1 * sy)
        st.markdown(f"**{wl.measurement_text(p0, p1, spacing, (sx, sy))}**")
        px = wl.distance_px(p0, p1, (sx, sy))
        if wl.distance_mm(p0, p1, spacing, (sx, sy)) is None:
            st.caption("The file states no pixel spacing, so no distance in mm can be given.")
        else:
            st.caption(f"{px:.0f} px of the {ow} x {oh} px original at {spacing[1]:.3f} x {spacing[0]:.3f} mm per "
                       "pixel (from the file). On a projection radiograph the spacing may be at the detector, so "
                       "the distance can include geometric magnification.")
    return p0, p1


def show_film(base, composite, interactive: bool, spacing, meta: Any = None) -> None:
    """The film, and beside it the film with its layers when one is on (same window, same zoom).

    `meta` (io.ImageMeta) gives the original size for distances; without it the displayed pixels are
    taken as the original ones.
    """
    layered = composite is not base
    caption = "Display only: window/level, invert and zoom do not change what the model sees."
    slot = st.container()  # the film first; the measurement controls below it decide its line
    line = _measurement(base, spacing, meta)
    with slot:
        if interactive:
            film = {"Original": base, "With layers": composite} if layered else {"Film": base}
            st.plotly_chart(dashboard.viewer_figure(film, spacing, scale=_scale(base, meta), line=line),
                            key="dx_viewer", config={"scrollZoom": True, "displaylogo": False,
                                                     "modeBarButtonsToRemove": ["select2d", "lasso2d"]})
            st.caption(caption + " Wheel: zoom; drag: pan; double click: reset.")
            return
        if line is not None:  # drawn on copies: `base` and `composite` also go into the reports
            base, composite = wl.draw_line(base, *line), wl.draw_line(composite, *line)
        if layered:
            c1, c2 = st.columns(2, gap="small")
            c1.image(base, width="stretch", caption="Original")
            c2.image(composite, width="stretch", caption="With layers")
            st.caption(caption)
        else:
            st.image(base, width="stretch", caption=caption)


def _units_note(meta: Any) -> str:
    """Where the film's real units come from, or why it has none."""
    if meta is None:
        return "No file information was given, so the window is on the display scale only."
    applied = getattr(meta, "voi_applied", "")
    if not wl.has_real_units(meta):
        if applied == "VOI LUT":
            why = "it was decoded through the file's VOI lookup table, which is not linear"
        elif applied.startswith("header window 1"):
            why = "it was decoded through a header window with no linear inverse (sigmoid or zero width)"
        else:
            why = "its decoded values are flat"
        return f"No real units for this film ({why}): the window is on the display scale only."
    presets = getattr(meta, "window_presets", ()) or ()
    if applied == "header window 1" and presets:
        _, c, w = presets[0]
        return (f"The file was decoded through its first header window (C {c:g} / W {w:g}): values outside it "
                "were clipped on reading and cannot be brought back here.")
    if applied == "full range":
        return "Display 0 and 1 are the film's lowest and highest values."
    return ""


def controls(pixels: np.ndarray, meta: Any = None) -> tuple[float, float, bool, bool]:
    """(brightness, contrast, inverted, interactive) from the viewer's widgets; `meta` (io.ImageMeta)
    gives the header presets and the real units. brightness / contrast are exact for a chosen preset."""
    film = _fingerprint(pixels, meta)
    exact = st.session_state.get(_EXACT)
    names = wl.preset_names(meta)
    if (exact and exact.get("film") != film) or st.session_state.get("dx_wl_preset") not in (None, *names):
        st.session_state.pop(_EXACT, None)  # another film: its presets and units differ
        st.session_state["dx_wl_preset"] = None
        exact = None
    with st.expander(":material/tune: Viewer: window / level, invert, zoom", expanded=False):
        st.selectbox("Window preset", names, index=None, key="dx_wl_preset",
                     placeholder="Choose a preset...", on_change=_apply_preset, args=(pixels, meta),
                     help="Header windows come from the DICOM file, in its units. The lung / mediastinum "
                     "presets are set from this film's own pixel percentiles (radiographs have no Hounsfield "
                     "scale): 1st-80th and 55th-99th.")
        v1, v2 = st.columns(2)
        brightness = v1.slider("Brightness (level)", -0.5, 0.5, 0.0, 0.01, key="dx_brightness",
                               on_change=_manual_window)
        contrast = v2.slider("Contrast (window)", 0.5, 4.0, 1.0, 0.05, key="dx_contrast", on_change=_manual_window)
        if exact and tuple(exact.get("sliders", ())) == (brightness, contrast):
            brightness, contrast = exact["levels"]
        elif exact:
            st.session_state.pop(_EXACT, None)
        w1, w2 = st.columns(2)
        inverted = w1.checkbox("Invert (bone dark)", value=False, key="dx_invert")
        w2.button("Reset window", key="dx_wl_reset", on_click=_reset_window, icon=":material/restart_alt:")
        centre, width = dashboard.window_from_sliders(brightness, contrast)
        note = _units_note(meta)
        st.caption(f"Current window: **{wl.format_window(centre, width, meta)}** (centre **{centre:.2f}**, "
                   f"width **{width:.2f}** on the display scale: 0 = darkest, 1 = brightest value of the decoded "
                   "film)." + (f" {note}" if note else ""))
    interactive = st.toggle("Zoom and pan (mouse wheel, drag)", value=False, key="dx_interactive",
                            help="An interactive view: the wheel zooms, dragging pans, a double click resets; "
                            "with a layer on, both panels move together.")
    return brightness, contrast, inverted, interactive
