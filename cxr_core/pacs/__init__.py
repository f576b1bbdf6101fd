"""PACS integration over DICOMweb: find studies, analyse them, write the results back as DICOM.

    from cxr_core.pacs import PacsClient, analyse_study, push_results
    client = PacsClient("http://127.0.0.1:8042/dicom-web", user="cxr", password="...")
    studies = client.search_studies(patient_id="123")       # QIDO-RS, CR/DX only
    result = analyse_study(client, studies[0].study_uid, classifier="vbreathnet")
    push_results(client, result)                            # STOW-RS, then checked by QIDO-RS

Outputs (`cxr_core.pacs.outputs`): a Comprehensive SR with the suggestion, calibrated
probabilities, abstention and reasons, the quality verdict and each detector box as an image
region, plus a secondary capture of the overlay with "Decision support, not a diagnosis" burnt in.
Both go into the source's study as new series. No identifier or credential is ever logged.
See docs/pacs.md.
"""

from __future__ import annotations

from cxr_core.pacs.client import PacsClient, PacsError, StudySummary
from cxr_core.pacs.outputs import DicomOutputs, dicom_outputs, read_sr
from cxr_core.pacs.workflow import InstanceResult, StudyResult, analyse_study, push_results

__all__ = [
    "DicomOutputs",
    "InstanceResult",
    "PacsClient",
    "PacsError",
    "StudyResult",
    "StudySummary",
    "analyse_study",
    "dicom_outputs",
    "push_results",
    "read_sr",
]
