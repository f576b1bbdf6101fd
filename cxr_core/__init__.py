"""cxr_core: the chest X-ray decision-support library behind the Streamlit app.

A plain library (no Streamlit): image input, quality checks, preprocessing, models,
training, evaluation, explanation, detection and reporting, one module per concern.
"""

__version__ = "0.1.0"
