"""Window/level in the file's real units and distances in mm (issue #19, reading room: the viewer).

Every check uses numbers worked out by hand from the DICOM standard (PS3.3 C.11.2.1.2 windows,
C.7.6.3.1.2 MONOCHROME1, PixelSpacing row/column order), not the code's own output.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import encode, make_dicom
from cxr_core.io import load_image
from cxr_core.ui import viewer as wl

SLOPE, INTERCEPT = 2.0, -1000.0
WIDE = ("WIDE", 3095.0, 8192.0)  # covers every rescaled value: -1000 .. 7190
NARROW = ("NARROW", 1000.0, 2000.0)


def _raw(h: int = 96, w: int = 256) -> np.ndarray:
    """12-bit stored values: a horizontal ramp 0..4095 plus a vertical wobble, so rows differ."""
    ramp = np.linspace(0, 4095, w)[None, :] + 40 * np.sin(np.arange(h) / 7.0)[:, None]
    return np.clip(np.rint(ramp), 0, 4095).astype(np.uint16)


def _dicom(photometric: str = "MONOCHROME2", windows=(WIDE, NARROW), names: bool = True, **tags) -> bytes:
    extra = dict(RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, RescaleType="OD")
    if windows:
        extra.update(WindowCenter=[c for _, c, _ in windows], WindowWidth=[w for _, _, w in windows])
        if names:
            extra["WindowCenterWidthExplanation"] = [n for n, _, _ in windows]
    extra.update(tags)
    return make_dicom(_raw(), photometric=photometric, bits_stored=12, **extra)


def _dicom_window(v: np.ndarray, centre: float, width: float, exact: bool = False) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) / C.11.2.1.3.2 (LINEAR_EXACT), written out on its own, output 0..1."""
    c, w = (centre, width) if exact else (centre - 0.5, width - 1.0)
    return np.clip((v - c) / w + 0.5, 0.0, 1.0)


def _shown(pixels: np.ndarray, meta, centre: float, width: float) -> np.ndarray:
    """What the viewer shows for a real-unit window: convert it, then window the decoded pixels."""
    exact = meta.voi_function == "LINEAR_EXACT"
    dc, dw = wl.window_to_display(centre, width, meta.value_range, exact=exact)
    return wl.window_level(pixels, *wl.levels_from_window(dc, dw)) / 255.0


# --- what io reads from the header -----------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_header_windows_units_and_value_range_read_back(photometric):
    img = load_image(_dicom(photometric))
    m = img.meta
    assert m.window_presets == (WIDE, NARROW)
    assert m.units == "OD" and m.voi_function == "LINEAR" and m.voi_applied == "header window 1"
    # the decoder applied window 1 (LINEAR): c - 0.5 -/+ (w - 1) / 2 became black / white
    lo, hi = 3094.5 - 8191 / 2, 3094.5 + 8191 / 2
    assert m.value_range == ((lo, hi) if photometric == "MONOCHROME2" else (hi, lo))  # MONO1: reversed
    # and that map is exact: v = lo + p * (hi - lo) gives back the rescaled stored values
    v0, v1 = m.value_range
    v = _raw() * SLOPE + INTERCEPT
    np.testing.assert_allclose(v0 + img.pixels * (v1 - v0), v, atol=abs(v1 - v0) * 1e-6)


def test_unnamed_header_windows_are_numbered_and_units_default():
    m = load_image(_dicom(windows=(WIDE, NARROW, ("x", 500.0, 300.0)), names=False, RescaleType=None)).meta
    assert m.window_presets == (("Header 1", 3095.0, 8192.0), ("Header 2", 1000.0, 2000.0),
                                ("Header 3", 500.0, 300.0))
    assert m.units == ""
    assert wl.units_label(m) == "(pixel value)"
    # a single-valued window is one preset
    single = load_image(_dicom(windows=None, WindowCenter=2048, WindowWidth=4096)).meta
    assert single.window_presets == (("Header 1", 2048.0, 4096.0),)


def test_png_and_jpeg_are_in_pixel_values():
    rng = np.random.default_rng(0)
    film = rng.integers(0, 256, (80, 90), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        m = load_image(encode(film, fmt)).meta
        assert m.value_range == (0.0, 255.0) and m.units == "" and m.window_presets == ()
        assert wl.format_window(0.5, 1.0, m) == "C 128 / W 256 (pixel value)"  # DICOM-style full 8-bit window
    # 16-bit data is min-max stretched by io, so its range is the film's own min..max, not 0..65535
    deep = (np.linspace(1000, 3000, 80 * 90).reshape(80, 90)).astype(np.uint16)
    img = load_image(encode(deep, "PNG"))
    assert img.meta.value_range == (1000.0, 3000.0)
    np.testing.assert_allclose(1000 + img.pixels * 2000, deep, atol=1e-3)


# --- real units <-> display scale ------------------------------------------------------------------


def test_full_range_of_a_12_bit_film_is_c2048_w4096():
    assert wl.window_to_real(0.5, 1.0, (0.0, 4095.0)) == (2048.0, 4096.0)
    assert wl.window_to_display(2048.0, 4096.0, (0.0, 4095.0)) == (0.5, 1.0)
    assert wl.window_to_display(2047.5, 4095.0, (0.0, 4095.0), exact=True) == (0.5, 1.0)
    # reversed (MONOCHROME1) range: a window low in value sits high on the display scale
    c, w = wl.window_to_display(1024.5, 1024.0, (4095.0, 0.0))
    assert c == pytest.approx(1 - 1024 / 4095) and w == pytest.approx(1023 / 4095)  # value 1024 at 1 - 1024/4095


@pytest.mark.parametrize("value_range", [(0.0, 4095.0), (7190.0, -1000.0), (-1001.0, 7190.0), (55.0, 844.0)])
@pytest.mark.parametrize("exact", [False, True])
def test_real_window_converts_to_display_and_back_exactly(value_range, exact):
    for centre, width in [(1000.0, 2000.0), (-600.0, 1500.0), (3095.0, 8192.0), (450.0, 790.0), (12.25, 3.5)]:
        back = wl.window_to_real(*wl.window_to_display(centre, width, value_range, exact=exact), value_range,
                                 exact=exact)
        assert back == pytest.approx((centre, width), rel=1e-12, abs=1e-9)
    for dc, dw in [(0.5, 1.0), (0.1, 0.05), (0.9, 3.0)]:
        again = wl.window_to_display(*wl.window_to_real(dc, dw, value_range, exact=exact), value_range, exact=exact)
        assert again == pytest.approx((dc, dw), rel=1e-12, abs=1e-12)


def test_no_real_units_without_a_linear_range():
    for bad in (None, (5.0, 5.0), (0.0, float("nan"))):
        with pytest.raises(ValueError):
            wl.window_to_display(100, 200, bad)
    assert wl.format_window(0.5, 1.0, None) == "C 0.50 / W 1.00 (display scale)"


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("window", [WIDE, NARROW, ("off-centre", 6000.0, 900.0), ("thin", 2500.5, 64.0)])
def test_header_window_on_decoded_pixels_matches_the_window_on_stored_values(photometric, window):
    """The display of a real-unit window == the DICOM window applied by hand to slope * stored + intercept
    (and, for MONOCHROME1, shown inverted: the lowest output value is white), within one grey level."""
    img = load_image(_dicom(photometric))
    _, centre, width = window
    y = _dicom_window(_raw() * SLOPE + INTERCEPT, centre, width)
    expected = 1.0 - y if photometric == "MONOCHROME1" else y
    np.testing.assert_allclose(_shown(img.pixels, img.meta, centre, width), expected, atol=1 / 255 + 1e-6)


def test_the_decoding_window_is_the_display_identity():
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        img = load_image(_dicom(photometric))
        presets = wl.window_presets(img.pixels, img.meta)
        assert presets["WIDE (header)"] == pytest.approx((0.5, 1.0))
        assert wl.format_window(0.5, 1.0, img.meta) == "C 3095 / W 8192 OD"
        np.testing.assert_array_equal(wl.window_level(img.pixels, *wl.levels_from_window(*presets["WIDE (header)"])),
                                      wl.window_level(img.pixels))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_min_max_film_without_header_window(photometric):
    """No window in the header: io stretches min..max of the rescaled values; a typed window still matches."""
    img = load_image(_dicom(photometric, windows=None))
    v = _raw() * SLOPE + INTERCEPT
    lo, hi = float(v.min()), float(v.max())
    assert img.meta.voi_applied == "full range" and img.meta.window_presets == ()
    assert img.meta.value_range == ((lo, hi) if photometric == "MONOCHROME2" else (hi, lo))
    y = _dicom_window(v, 3000.0, 1000.0)
    expected = 1.0 - y if photometric == "MONOCHROME1" else y
    np.testing.assert_allclose(_shown(img.pixels, img.meta, 3000.0, 1000.0), expected, atol=1 / 255 + 1e-6)


def test_linear_exact_header():
    img = load_image(_dicom(VOILUTFunction="LINEAR_EXACT"))
    assert img.meta.voi_function == "LINEAR_EXACT"
    assert img.meta.value_range == (3095.0 - 4096.0, 3095.0 + 4096.0)
    y = _dicom_window(_raw() * SLOPE + INTERCEPT, 1000.0, 2000.0, exact=True)
    np.testing.assert_allclose(_shown(img.pixels, img.meta, 1000.0, 2000.0), y, atol=1 / 255 + 1e-6)


def test_voi_lut_film_has_no_real_units_but_keeps_its_header():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 12])
    lut.add_new("LUTData", "US", (np.sqrt(np.arange(4096) / 4095) * 4095).round().astype(np.uint16).tolist())
    img = load_image(make_dicom(_raw(), bits_stored=12, VOILUTSequence=Sequence([lut]), WindowCenter=100,
                                WindowWidth=10))
    assert img.meta.voi_applied == "VOI LUT" and img.meta.value_range is None
    assert img.meta.window_presets == (("Header 1", 100.0, 10.0),)
    assert not wl.has_real_units(img.meta)
    assert wl.preset_names(img.meta) == ["Lung (auto, wide)", "Mediastinum (auto, narrow)", "Auto (1-99 %)",
                                         "Full range"]  # a header window cannot be placed on a LUT's output


def test_sigmoid_header_window_has_no_real_units():
    img = load_image(_dicom(VOILUTFunction="SIGMOID"))
    assert img.meta.voi_applied == "header window 1 (SIGMOID)" and img.meta.value_range is None
    assert img.meta.window_presets == (WIDE, NARROW) and img.meta.voi_function == "SIGMOID"
    assert "(header)" not in " ".join(wl.preset_names(img.meta))


# --- the preset menu -------------------------------------------------------------------------------


def test_preset_menu_header_first_then_film_relative():
    img = load_image(_dicom())
    names = wl.preset_names(img.meta)
    assert names == ["WIDE (header)", "NARROW (header)", "Lung (auto, wide)", "Mediastinum (auto, narrow)",
                     "Auto (1-99 %)", "Full range"]
    presets = wl.window_presets(img.pixels, img.meta)
    assert list(presets) == names
    # NARROW: C 1000 / W 2000 on a window-1 range of -1001 .. 7190 (span 8191)
    assert presets["NARROW (header)"] == pytest.approx(((999.5 + 1001) / 8191, 1999 / 8191))
    assert wl.format_window(*presets["NARROW (header)"], img.meta) == "C 1000 / W 2000 OD"
    assert presets["Full range"] == (0.5, 1.0)
    p1, p55, p80, p99 = np.percentile(img.pixels, [1, 55, 80, 99])
    assert presets["Lung (auto, wide)"] == pytest.approx(((p1 + p80) / 2, p80 - p1), abs=1e-6)
    assert presets["Mediastinum (auto, narrow)"] == pytest.approx(((p55 + p99) / 2, p99 - p55), abs=1e-6)
    assert presets["Auto (1-99 %)"] == pytest.approx(wl.auto_window(img.pixels), abs=1e-6)
    for name in names:
        assert wl.preset_window(name, img.pixels, img.meta) == pytest.approx(presets[name])
    assert wl.preset_window("Lung", img.pixels, img.meta) is None
    assert wl.preset_names(None)[0] == "Lung (auto, wide)"


def test_levels_from_window_are_exact_where_the_sliders_round():
    b, c = wl.levels_from_window(0.12345, 0.0321)
    assert wl.window_from_sliders(b, c) == pytest.approx((0.12345, 0.0321), rel=1e-12)
    assert wl.sliders_from_window(0.12345, 0.0321) == (0.38, 4.0)  # the slider can only approximate it


# --- distance --------------------------------------------------------------------------------------


def test_distance_mm_with_known_spacing():
    spacing = (0.2, 0.1)  # DICOM order: 0.2 mm between rows (y), 0.1 mm between columns (x)
    assert wl.distance_mm((0, 0), (30, 40), spacing) == pytest.approx(math.hypot(3.0, 8.0))
    # the same two points on a film shown at half size
    assert wl.distance_mm((0, 0), (15, 20), spacing, 0.5) == pytest.approx(math.hypot(3.0, 8.0))
    assert wl.distance_mm((10, 10), (10 + 60 * 0.25, 10), spacing, (0.25, 0.5)) == pytest.approx(6.0)
    assert wl.distance_px((0, 0), (15, 20), 0.5) == pytest.approx(50.0)
    assert wl.measurement_text((0, 0), (300, 400), (0.139, 0.139)) == "Distance: 69.5 mm"


def test_no_spacing_gives_no_mm():
    for spacing in (None, (0.0, 0.1), (float("nan"), 0.1), ("a", "b"), (0.1,)):
        assert wl.distance_mm((0, 0), (300, 400), spacing) is None
    text = wl.measurement_text((0, 0), (150, 200), None, 0.5)
    assert text == "Pixel spacing unknown: 500 px" and "mm" not in text


def test_distance_on_a_downscaled_dicom():
    """io downscales a 2100 x 1100 film to a 1024 px long side; a 2000 px line of the file is 278 mm."""
    from cxr_core import settings

    raw = np.tile(np.arange(2100, dtype=np.uint16) % 4096, (1100, 1))
    img = load_image(make_dicom(raw, bits_stored=12, PixelSpacing=[0.139, 0.139]))
    assert img.meta.original_size == (2100, 1100) and img.width == settings.WORKING_SIDE
    scale = wl.box_scale(img)
    assert scale[0] < 0.5
    p0, p1 = (50 * scale[0], 500 * scale[1]), (2050 * scale[0], 500 * scale[1])
    assert wl.distance_mm(p0, p1, img.meta.pixel_spacing, scale) == pytest.approx(2000 * 0.139)
    png = load_image(encode(np.zeros((100, 120), np.uint8), "PNG"))
    assert png.meta.pixel_spacing is None
    assert wl.distance_mm((0, 0), (10, 0), png.meta.pixel_spacing, wl.box_scale(png)) is None


def test_viewer_figure_spacing_per_displayed_pixel_and_line():
    rgb = np.zeros((50, 60, 3), np.uint8)
    fig = wl.viewer_figure({"Film": rgb}, (0.139, 0.139), scale=0.5, line=((1, 2), (30, 40)))
    assert "0.278 x 0.278 mm per px" in fig.data[0].hovertemplate
    (shape,) = fig.layout.shapes
    assert (shape.x0, shape.y0, shape.x1, shape.y1) == (1, 2, 30, 40)
    drawn = wl.draw_line(rgb, (5, 5), (40, 5))
    assert drawn[5, 20].any() and not rgb.any()  # drawn on a copy


# --- the page part (Streamlit AppTest, only the viewer's widgets) -----------------------------------


def _viewer_app(dicom: bytes):
    def script(data: bytes) -> None:
        import streamlit as st

        from cxr_core.io import load_image
        from pages import _viewer

        img = load_image(data)
        b, c, inverted, interactive = _viewer.controls(img.pixels, img.meta)
        st.session_state["out"] = (b, c)
        _viewer.show_film(img.to_uint8(), img.to_uint8(), interactive, img.meta.pixel_spacing, meta=img.meta)

    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(script, args=(dicom,), default_timeout=30)


def _captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_page_preset_shows_real_units_exactly_and_resets():
    import sys

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    at = _viewer_app(_dicom())
    at.run()
    assert not at.exception, at.exception
    assert "C 3095 / W 8192 OD" in _captions(at)  # the decoding window: identity
    assert "first header window (C 3095 / W 8192)" in _captions(at)
    at.selectbox(key="dx_wl_preset").set_value("NARROW (header)").run()
    assert not at.exception, at.exception
    assert "C 1000 / W 2000 OD" in _captions(at)
    b, c = at.session_state["out"]
    assert wl.window_from_sliders(b, c) == pytest.approx(((999.5 + 1001) / 8191, 1999 / 8191), rel=1e-9)
    # moving a slider makes the window the user's own (rounded to the slider) and clears the preset
    at.slider(key="dx_brightness").set_value(0.1).run()
    assert at.selectbox(key="dx_wl_preset").value is None and at.session_state["out"][0] == 0.1
    at.button(key="dx_wl_reset").click().run()
    assert at.session_state["out"] == (0.0, 1.0) and "centre **0.50**, width **1.00**" in _captions(at)
    # measurement: mm with the file's spacing (make_dicom writes 0.139 mm)
    at.toggle(key="dx_measure").set_value(True).run()
    for key, value in (("dx_m_x0", 0), ("dx_m_y0", 0), ("dx_m_x1", 200), ("dx_m_y1", 0)):
        at.number_input(key=key).set_value(value)
    at.run()
    assert not at.exception, at.exception
    assert "Distance: 27.8 mm" in "\n".join(m.value for m in at.markdown)


def test_page_measurement_without_spacing_shows_pixels_only():
    at = _viewer_app(_dicom(PixelSpacing=None))
    at.run()
    at.toggle(key="dx_measure").set_value(True).run()
    at.number_input(key="dx_m_x0").set_value(0)
    at.number_input(key="dx_m_y0").set_value(0)
    at.number_input(key="dx_m_x1").set_value(30)
    at.number_input(key="dx_m_y1").set_value(40).run()
    assert not at.exception, at.exception
    text = "\n".join(m.value for m in at.markdown) + _captions(at)
    assert "Pixel spacing unknown: 50 px" in text and "mm" not in "\n".join(m.value for m in at.markdown)


# --- real files ----------------------------------------------------------------------------------------


def _check_real_file(path: str | Path) -> None:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_windowing

    img = load_image(path)
    ds = pydicom.dcmread(path)
    m = img.meta
    if not wl.has_real_units(m):
        pytest.skip(f"{Path(path).name}: decoded through a non-linear VOI ({m.voi_applied}), no real units")
    v = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    for i, (name, centre, width) in enumerate(m.window_presets):
        exact = m.voi_function == "LINEAR_EXACT"
        dc, dw = wl.window_to_display(centre, width, m.value_range, exact=exact)
        assert wl.window_to_real(dc, dw, m.value_range, exact=exact) == pytest.approx((centre, width))
        if img.meta.downscaled:
            continue  # the decoded film was resampled: no per-pixel comparison
        # pydicom's own windowing of the header view i, on an 8-bit-output context
        ctx = pydicom.Dataset()
        ctx.PhotometricInterpretation, ctx.BitsStored, ctx.PixelRepresentation = "MONOCHROME2", 8, 0
        ctx.WindowCenter, ctx.WindowWidth = ds.WindowCenter, ds.WindowWidth
        ctx.VOILUTFunction = m.voi_function
        ref = apply_windowing(v, ctx, index=i) / 255.0
        if m.photometric == "MONOCHROME1":
            ref = 1.0 - ref
        v0, v1 = sorted(m.value_range)
        inside = (v >= v0) & (v <= v1)  # values the decoder's own window clipped cannot be compared
        got = _shown(img.pixels, m, centre, width)
        np.testing.assert_allclose(got[inside], ref[inside], atol=1 / 255 + 1e-6, err_msg=name)


def test_real_dicom_bundled_with_pydicom():
    """A real MR file shipped with pydicom: two named header windows (WINDOW1 450/790, WINDOW2 200/443)."""
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file("examples_overlay.dcm", download=False)
    except TypeError:  # older pydicom without `download`
        path = get_testdata_file("examples_overlay.dcm")
    if not path or not os.path.isfile(path):
        pytest.skip("pydicom's bundled examples_overlay.dcm is not installed")
    m = load_image(path).meta
    assert m.window_presets == (("WINDOW1", 450.0, 790.0), ("WINDOW2", 200.0, 443.0))
    assert m.value_range == (449.5 - 789 / 2, 449.5 + 789 / 2)
    _check_real_file(path)
