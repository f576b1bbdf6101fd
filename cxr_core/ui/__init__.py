"""Helpers behind the Streamlit pages, without Streamlit: `cards` (model cards -> tables), `figures`
(plotly), `viewer` (image operations of the film viewer), `reading` (worklist, captions, metadata).

`cxr_core.dashboard` re-exports all of them under one name, as the pages have always used it.
"""
