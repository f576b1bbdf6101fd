"""A small DICOMweb client (QIDO-RS search, WADO-RS retrieve, STOW-RS store) on `dicomweb-client`.

Every failure leaves as a `PacsError` whose message a user can act on (server unreachable,
credentials refused, not found, timeout, malformed answer); no other exception type leaves a
public method. Nothing here logs an identifier or a credential: the third-party loggers that
would print query strings or UIDs are quietened (`quiet_third_party_logs`).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

log = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX")
DEFAULT_TIMEOUT: float = 20.0
T = TypeVar("T")


class PacsError(RuntimeError):
    """A PACS operation failed; the message is meant for the user (no identifiers, no credentials).

    `kind` is one of: unreachable, unauthorised, forbidden, not_found, timeout, malformed,
    server, refused, incomplete, config.
    """

    def __init__(self, message: str, kind: str = "server"):
        super().__init__(message)
        self.kind = kind


# --- logging hygiene ----------------------------------------------------------------------------

_UID_RE = re.compile(r"\d+(?:\.\d+){4,}")


def _redact(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if "?" in value:
        value = value.split("?", 1)[0] + "?<query hidden>"
    return _UID_RE.sub("<uid>", value)


class _RedactFilter(logging.Filter):
    """Strip query strings and UIDs from urllib3's request lines (`GET /studies?PatientID=...`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) for a in record.args)
        record.msg = _redact(record.msg)
        return True


_QUIETED = False


def quiet_third_party_logs() -> None:
    """dicomweb-client logs request URLs (with PatientID filters) and study UIDs at DEBUG/INFO, and
    urllib3 logs every request line: silence the former and redact the latter, once per process."""
    global _QUIETED
    if _QUIETED:
        return
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL + 1)
    pool = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RedactFilter) for f in pool.filters):
        pool.addFilter(_RedactFilter())
    _QUIETED = True


# --- results --------------------------------------------------------------------------------------


def _first(item: dict, tag: str) -> Any:
    """First value of a DICOM JSON attribute (e.g. '0020000D'), or None."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN
        return value.get("Alphabetic")
    return value


def _all(item: dict, tag: str) -> list[str]:
    return [str(v) for v in (item.get(tag) or {}).get("Value") or [] if v not in (None, "")]


@dataclass(frozen=True)
class StudySummary:
    """One QIDO-RS study answer. Identifiers are kept apart (`identifiers`) so that a caller shows
    them only when asked; `study_uid` is needed to address the study."""

    study_uid: str
    study_date: str | None
    modalities: tuple[str, ...]
    description: str | None
    n_series: int | None
    n_instances: int | None
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, item: dict) -> "StudySummary":
        uid = _first(item, "0020000D")
        if not uid:
            raise ValueError("study without StudyInstanceUID")

        def count(tag: str) -> int | None:
            value = _first(item, tag)
            try:
                return int(value) if value is not None else None
            except (TypeError, ValueError):
                return None

        ids = {k: str(v) for k, v in {
            "PatientName": _first(item, "00100010"),
            "PatientID": _first(item, "00100020"),
            "AccessionNumber": _first(item, "00080050"),
        }.items() if v not in (None, "")}
        return cls(
            study_uid=str(uid),
            study_date=_first(item, "00080020"),
            modalities=tuple(_all(item, "00080061")),
            description=_first(item, "00081030"),
            n_series=count("00201206"),
            n_instances=count("00201208"),
            identifiers=ids,
        )


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance lives, with the header fields the workflow needs before retrieving it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str | None
    modality: str | None
    view_position: str | None
    series_description: str | None
    n_frames: int | None


# --- the client -------------------------------------------------------------------------------------


def _check_date(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    text = str(value).replace("-", "")
    if not re.fullmatch(r"\d{8}", text):
        raise PacsError(f"The {name} must be a date as YYYY-MM-DD or YYYYMMDD.", "config")
    return text


class PacsClient:
    """DICOMweb access to one server. `url` is the DICOMweb root (Orthanc: http://host:8042/dicom-web).

    Credentials are held by the HTTP session only; they are never logged or part of a message.
    """

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        quiet_third_party_logs()
        url = (url or "").strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise PacsError("The PACS address must be a DICOMweb URL such as http://host:8042/dicom-web.", "config")
        self.url = url
        self.timeout = timeout
        try:
            from dicomweb_client.api import DICOMwebClient
            from dicomweb_client.session_utils import create_session_from_user_pass
            import requests
        except ImportError:  # pragma: no cover - requirements.txt pins it
            raise PacsError("DICOMweb support is not installed (pip install dicomweb-client).", "config") from None
        session = create_session_from_user_pass(user, password or "") if user else requests.Session()
        self._client = DICOMwebClient(url, session=session, timeout=timeout)
        # a few quick retries on 429/503/504 only; other errors are reported at once
        self._client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)

    def __repr__(self) -> str:  # never the credentials
        return f"PacsClient(url={self.url!r})"

    # --- error translation --------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import requests

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()
        except PacsError:
            raise
        except requests.exceptions.Timeout:
            raise PacsError(f"The PACS did not answer within {self.timeout:g} s while {what}. "
                            "It may be busy or unreachable; try again later.", "timeout") from None
        except requests.exceptions.SSLError:
            raise PacsError(f"The secure connection to the PACS failed while {what} (TLS certificate "
                            "problem).", "unreachable") from None
        except requests.exceptions.ConnectionError:
            raise PacsError(f"The PACS at {self.url} cannot be reached while {what}: is the server running "
                            "and the address right?", "unreachable") from None
        except requests.exceptions.HTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            raise _http_error(status, what) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema):
            raise PacsError("The PACS address is not a valid URL.", "config") from None
        except requests.exceptions.RequestException:
            raise PacsError(f"The request to the PACS failed while {what}.", "server") from None
        except Exception as exc:  # decoding JSON / multipart / DICOM: the server's answer was not DICOMweb
            log.debug("malformed PACS answer (%s)", type(exc).__name__)
            raise _malformed(what) from None

    # --- QIDO-RS ------------------------------------------------------------------------------

    def ping(self) -> None:
        """Check address and credentials with the cheapest query; raises PacsError."""
        self._call("checking the connection", lambda: self._client.search_for_studies(limit=1))

    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        accession: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        study_uid: str | None = None,
        modalities: Sequence[str] | None = RADIOGRAPH_MODALITIES,
        limit: int = 100,
    ) -> list[StudySummary]:
        """Studies matching all the filters given. `modalities` keeps studies holding any of them
        (default CR/DX; None for every study). Dates are inclusive (YYYY-MM-DD or YYYYMMDD)."""
        filters: dict[str, Any] = {}
        if patient_id:
            filters["PatientID"] = str(patient_id).strip()
        if accession:
            filters["AccessionNumber"] = str(accession).strip()
        if study_uid:
            filters["StudyInstanceUID"] = str(study_uid).strip()
        lo, hi = _check_date(date_from, "start date"), _check_date(date_to, "end date")
        if lo or hi:
            filters["StudyDate"] = f"{lo or ''}-{hi or ''}"
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientName", "PatientID", "StudyDate"]
        wanted = [m.upper() for m in modalities] if modalities else None
        answers: list[dict] = []
        # One query per modality: ModalitiesInStudy with a list is not supported by every server.
        for modality in (wanted or [None]):
            query = dict(filters)
            if modality:
                query["ModalitiesInStudy"] = modality
            answers += _json_list(self._call("searching for studies", lambda q=query: self._client.search_for_studies(
                search_filters=q, fields=fields, limit=limit)), "searching for studies")
        out: dict[str, StudySummary] = {}
        for item in answers:
            try:
                study = StudySummary.from_json(item)
            except Exception:
                raise _malformed("searching for studies") from None
            if wanted and not set(wanted) & set(study.modalities) and study.modalities:
                continue  # a server that ignored the filter
            out.setdefault(study.study_uid, study)
        return sorted(out.values(), key=lambda s: (s.study_date or "", s.study_uid), reverse=True)[:limit]

    def study_modalities(self, study_uid: str) -> list[str]:
        """Modalities of every series in the study (sorted, unique)."""
        series = _json_list(self._call("listing the study's series", lambda: self._client.search_for_series(
            study_instance_uid=study_uid, fields=["Modality"])), "listing the study's series")
        return sorted({str(_first(s, "00080060") or "?") for s in series})

    def list_series(self, study_uid: str) -> list[dict[str, Any]]:
        """[{series_uid, modality, description, n_instances}] of one study."""
        series = _json_list(self._call("listing the study's series", lambda: self._client.search_for_series(
            study_instance_uid=study_uid, fields=["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"])),
            "listing the study's series")
        out = []
        for s in series:
            uid = _first(s, "0020000E")
            if not uid:
                raise _malformed("listing the study's series")
            n = _first(s, "00201209")
            out.append({"series_uid": str(uid), "modality": _first(s, "00080060"),
                        "description": _first(s, "0008103E"), "n_instances": int(n) if n is not None else None})
        return out

    def list_instances(self, study_uid: str, series_uid: str | None = None) -> list[InstanceRef]:
        """Every instance of the study (or of one series) with the header fields needed to triage it."""
        fields = ["Modality", "ViewPosition", "NumberOfFrames", "SOPClassUID", "SeriesDescription",
                  "SeriesInstanceUID"]
        answers = _json_list(self._call("listing the study's images", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid, fields=fields)), "listing the study's images")
        out = []
        for item in answers:
            sop, series = _first(item, "00080018"), _first(item, "0020000E") or series_uid
            if not sop or not series:
                raise _malformed("listing the study's images")
            frames = _first(item, "00280008")
            try:
                frames = int(frames) if frames is not None else None
            except (TypeError, ValueError):
                frames = None
            out.append(InstanceRef(study_uid=study_uid, series_uid=str(series), sop_uid=str(sop),
                                   sop_class_uid=_first(item, "00080016"), modality=_first(item, "00080060"),
                                   view_position=_first(item, "00185101"),
                                   series_description=_first(item, "0008103E"), n_frames=frames))
        return out

    def instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        found = _json_list(self._call("checking what was stored", lambda: self._client.search_for_instances(
            study_instance_uid=study_uid, series_instance_uid=series_uid,
            search_filters={"SOPInstanceUID": sop_uid})), "checking what was stored")
        return any(_first(i, "00080018") == sop_uid for i in found)

    # --- WADO-RS ------------------------------------------------------------------------------

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance as a DICOM file (bytes, Part 10)."""
        import pydicom

        ds = self._call("retrieving an image", lambda: self._client.retrieve_instance(
            ref.study_uid, ref.series_uid, ref.sop_uid))
        if not isinstance(ds, pydicom.Dataset):
            raise PacsError("The PACS sent something that is not a DICOM instance.", "malformed")
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception:
            try:
                buf = io.BytesIO()
                ds.save_as(buf)
            except Exception:
                raise PacsError("The PACS sent a DICOM instance that cannot be re-encoded.", "malformed") from None
        return buf.getvalue()

    # --- STOW-RS ------------------------------------------------------------------------------

    def store(self, datasets: Iterable[Any], study_uid: str | None = None) -> None:
        """Store DICOM datasets (pydicom Datasets or Part 10 bytes). Raises PacsError unless the server
        accepted every one; a partial store says how many were kept."""
        import pydicom

        items = [pydicom.dcmread(io.BytesIO(d), force=True) if isinstance(d, (bytes, bytearray)) else d
                 for d in datasets]
        if not items:
            return
        answer = self._call("storing results", lambda: self._client.store_instances(items, study_uid))
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        stored = {str(getattr(x, "ReferencedSOPInstanceUID", "")) for x in getattr(answer, "ReferencedSOPSequence", None) or []}
        wanted = {str(d.SOPInstanceUID) for d in items}
        if failed or (stored and not wanted <= stored):
            kept = len(wanted & stored)
            raise PacsError(f"The PACS refused {len(wanted) - kept} of {len(wanted)} objects "
                            f"({kept} stored). The results were not completely sent.", "incomplete")


def _malformed(what: str) -> PacsError:
    return PacsError(f"The PACS sent an answer that is not valid DICOMweb while {what}. Is the URL the server's "
                     "DICOMweb root (Orthanc: .../dicom-web)?", "malformed")


def _json_list(answer: Any, what: str) -> list[dict]:
    """A QIDO answer must be a list of DICOM JSON objects."""
    if not isinstance(answer, list) or not all(isinstance(a, dict) for a in answer):
        raise _malformed(what)
    return answer


def _http_error(status: int | None, what: str) -> PacsError:
    if status == 401:
        return PacsError("The PACS refused the user name or password (HTTP 401). Check the credentials.",
                         "unauthorised")
    if status == 403:
        return PacsError(f"The PACS account is not allowed to do this (HTTP 403) while {what}.", "forbidden")
    if status == 404:
        return PacsError(f"The PACS answered 'not found' (HTTP 404) while {what}: the study may have been "
                         "deleted, or the URL is not the DICOMweb root (Orthanc: .../dicom-web).", "not_found")
    if status in (408, 504):
        return PacsError(f"The PACS timed out (HTTP {status}) while {what}; try again later.", "timeout")
    if status == 413:
        return PacsError(f"The PACS refused the upload as too large (HTTP 413) while {what}.", "refused")
    if status in (400, 409, 415, 422):
        return PacsError(f"The PACS refused the request (HTTP {status}) while {what}. Check that the URL is the "
                         "server's DICOMweb root (Orthanc: .../dicom-web) and the search values.", "refused")
    if status is not None and status >= 500:
        return PacsError(f"The PACS had an internal error (HTTP {status}) while {what}; try again later "
                         "or ask its administrator.", "server")
    return PacsError(f"The PACS answered with an unexpected status (HTTP {status}) while {what}.", "server")
