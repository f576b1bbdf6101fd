"""Downloadable reports of one analysed image: `record` (the JSON record) and `pdf` (the PDF).

`from cxr_core import report; report.build_record(...)`, `report.to_pdf(...)` as before the split.
"""

from cxr_core.report.pdf import latin1, to_pdf
from cxr_core.report.record import SCHEMA_VERSION, TITLE, build_record, model_version, to_json

__all__ = ["SCHEMA_VERSION", "TITLE", "build_record", "latin1", "model_version", "to_json", "to_pdf"]
