"""A DICOMweb query as the input of a batch run: score what a PACS holds, not only folders.

    export CXR_PACS_USER=... CXR_PACS_PASSWORD=...       # never in the URL, never printed
    python -m cxr_core.batch "dicomweb+http://pacs:8042/dicom-web?PatientID=123&StudyDate=20240101-20240131" --out runs/jan

INPUT is the DICOMweb root with `dicomweb+` in front of its scheme and the QIDO filters as query
parameters: `StudyInstanceUID`, `PatientID`, `AccessionNumber`, `StudyDate` (a date or a range
`FROM-TO`), `limit` (studies, default 100). The driver lists the matching studies' instances and
keeps the frontal CR/DX single-frame images (the same scope rule as `python -m cxr_core.pacs
analyse`); each worker retrieves its instance's bytes itself (WADO-RS), so pixels never pass
through the driver. A row's `file` is `dicomweb://STUDY/SERIES/SOP` (UIDs, no identifiers).
Nothing is written back to the PACS: pushing SR / secondary capture is `pacs analyse --push`.
Checked end to end (Ray actors reading by WADO-RS) against `scripts/pacs_dev.sh`; the test suite
checks the resolver and reader against a real Orthanc (tests/pacs/test_pacs.py).
"""

from __future__ import annotations

import functools
import os
from urllib.parse import parse_qs, urlsplit, urlunsplit

from cxr_core.batch.inputs import InputError, InputItem
from cxr_core.io import ImageLoadError

SCHEMES = ("dicomweb+http", "dicomweb+https")
FILTERS = {"StudyInstanceUID": "study_uid", "PatientID": "patient_id", "AccessionNumber": "accession"}


def _root(spec: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(spec)
    root = urlunsplit((parts.scheme.removeprefix("dicomweb+"), parts.netloc, parts.path, "", ""))
    return root, parse_qs(parts.query)


@functools.lru_cache(maxsize=4)
def _client(root: str):
    """One client per process and server; credentials from CXR_PACS_USER / CXR_PACS_PASSWORD."""
    from cxr_core.pacs.client import PacsClient

    return PacsClient(root, user=os.environ.get("CXR_PACS_USER") or None,
                      password=os.environ.get("CXR_PACS_PASSWORD"))


def resolve(spec: str) -> list[InputItem] | None:
    """The frontal CR/DX instances of the studies a `dicomweb+http(s)://...?...` INPUT finds."""
    if not spec.startswith(tuple(s + "://" for s in SCHEMES)):
        return None
    from cxr_core.pacs.client import PacsError
    from cxr_core.pacs.workflow import scope_problem

    root, query = _root(spec)
    unknown = set(query) - set(FILTERS) - {"StudyDate", "limit"}
    if unknown:
        raise InputError(f"Unknown DICOMweb filter(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join([*FILTERS, 'StudyDate', 'limit'])}.")
    kwargs = {FILTERS[k]: v[0] for k, v in query.items() if k in FILTERS}
    if "StudyDate" in query:
        date_from, _, date_to = query["StudyDate"][0].partition("-")
        kwargs |= {"date_from": date_from or None, "date_to": date_to or date_from or None}
    try:
        limit = int(query.get("limit", ["100"])[0])
        client = _client(root)
        items = []
        for study in client.search_studies(limit=limit, **kwargs):
            for ref in client.list_instances(study.study_uid):
                if scope_problem(ref.modality, ref.view_position, ref.n_frames) is None:
                    uri = f"dicomweb://{ref.study_uid}/{ref.series_uid}/{ref.sop_uid}"
                    items.append(InputItem(uri, f"{spec.split('?', 1)[0]}?{uri.removeprefix('dicomweb://')}"))
    except PacsError as exc:
        raise InputError(str(exc)) from None
    except ValueError:
        raise InputError("limit must be a whole number of studies.") from None
    return items


def read(source: str) -> bytes:
    """One instance's DICOM bytes (in the worker); server problems become the row's message."""
    from cxr_core.pacs.client import InstanceRef, PacsError

    root, _ = _root(source.split("?", 1)[0])
    study, series, sop = source.split("?", 1)[1].split("/")
    try:
        return _client(root).retrieve(InstanceRef(study, series, sop, None, None, None, None, None))
    except PacsError as exc:
        raise ImageLoadError(f"The PACS did not return this image: {exc}") from None

