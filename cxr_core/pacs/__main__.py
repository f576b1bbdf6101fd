"""Command line: search a DICOMweb PACS, analyse a study, store the SR and secondary capture back.

    python -m cxr_core.pacs search  --url URL [--patient-id ID] [--from 2024-01-01] [--to ...]
    python -m cxr_core.pacs analyse --url URL --study STUDY_UID [--push] [--out DIR]

The server and credentials can come from CXR_PACS_URL, CXR_PACS_USER and CXR_PACS_PASSWORD (better
than --password, which other users of the machine can see in the process list). Credentials are
never printed. Patient identifiers are printed only with --show-identifiers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# The one exit convention of `python -m cxr_core` (0 done, 1 ran and reported a problem, 2 could not
# run); the printed message says which server state it was.
EXIT_OK = 0
EXIT_ERROR = 1  # anything else that went wrong (message printed)
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_CONNECTION = 2  # could not run: unreachable, credentials refused, forbidden, timeout
EXIT_NOT_ANALYSABLE = 2  # could not run: study not found / no CR-DX frontal image / malformed answers
EXIT_INCOMPLETE = 1  # ran, but the results were not (completely) stored

_KIND_EXIT = {"unreachable": EXIT_CONNECTION, "unauthorised": EXIT_CONNECTION, "forbidden": EXIT_CONNECTION,
              "timeout": EXIT_CONNECTION, "config": EXIT_USAGE, "not_found": EXIT_NOT_ANALYSABLE,
              "refused": EXIT_NOT_ANALYSABLE, "malformed": EXIT_NOT_ANALYSABLE, "incomplete": EXIT_INCOMPLETE}

EPILOG = """\
environment:
  CXR_PACS_URL        DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (instead of --url)
  CXR_PACS_USER       HTTP basic-auth user (instead of --user)
  CXR_PACS_PASSWORD   its password (instead of --password; preferred)

exit codes:
  0 done
  1 ran and reported a problem: results not (completely) stored, or another error (message printed)
  2 could not run: usage or configuration, PACS unreachable, credentials refused, timeout,
    study not found or nothing in scope (not a frontal CR/DX radiograph)

Decision support, not a diagnosis: a clinician reviews every result.
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="DICOMweb root URL (default: $CXR_PACS_URL)")
    common.add_argument("--user", default=None, help="user name (default: $CXR_PACS_USER)")
    common.add_argument("--password", default=None, help="password (default: $CXR_PACS_PASSWORD; never printed)")
    common.add_argument("--timeout", type=float, default=20.0, help="seconds per request (default 20)")
    common.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    common.add_argument("--show-identifiers", action="store_true", help="also print patient name / ID / accession")

    p = argparse.ArgumentParser(prog="python -m cxr_core.pacs", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{search,analyse}")

    s = sub.add_parser("search", parents=[common], help="find CR/DX studies (QIDO-RS)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--patient-id", default=None)
    s.add_argument("--accession", default=None)
    s.add_argument("--from", dest="date_from", default=None, help="first study date, YYYY-MM-DD")
    s.add_argument("--to", dest="date_to", default=None, help="last study date, YYYY-MM-DD")
    s.add_argument("--study", default=None, help="one Study Instance UID")
    s.add_argument("--all-modalities", action="store_true", help="not only studies holding CR/DX")
    s.add_argument("--limit", type=int, default=50)

    a = sub.add_parser("analyse", aliases=["analyze"], parents=[common],
                       help="analyse every frontal CR/DX image of a study; --push stores SR + secondary capture",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--study", required=True, help="Study Instance UID (from `search`)")
    a.add_argument("--push", action="store_true", help="store the SR and secondary capture in the study (STOW-RS)")
    a.add_argument("--model", default=None, help="classifier (default: the app's default)")
    a.add_argument("--age-group", choices=("adult", "paediatric", "other"), default=None,
                   help="patient age group (default: from the DICOM header)")
    a.add_argument("--no-detector", action="store_true", help="do not run the abnormality detector")
    a.add_argument("--no-heatmap", action="store_true", help="secondary capture without the heatmap")
    a.add_argument("--out", type=Path, default=None, help="also write the SR / SC files into this folder")
    return p


def _client(args):
    from cxr_core.pacs.client import PacsClient, PacsError

    url = args.url or os.environ.get("CXR_PACS_URL")
    if not url:
        raise PacsError("No PACS given: pass --url or set CXR_PACS_URL.", "config")
    user = args.user or os.environ.get("CXR_PACS_USER") or None
    password = args.password if args.password is not None else os.environ.get("CXR_PACS_PASSWORD")
    return PacsClient(url, user=user, password=password, timeout=args.timeout)


def _search(args, out) -> int:
    client = _client(args)
    studies = client.search_studies(patient_id=args.patient_id, accession=args.accession, date_from=args.date_from,
                                    date_to=args.date_to, study_uid=args.study,
                                    modalities=None if args.all_modalities else ("CR", "DX"), limit=args.limit)
    rows = []
    for s in studies:
        row = {"study_uid": s.study_uid, "date": s.study_date or "", "modalities": "/".join(s.modalities),
               "series": s.n_series, "instances": s.n_instances, "description": s.description or ""}
        if args.show_identifiers:
            row |= {k: s.identifiers.get(k, "") for k in ("PatientID", "PatientName", "AccessionNumber")}
        rows.append(row)
    if args.json:
        print(json.dumps({"studies": rows}, indent=2), file=out)
        return EXIT_OK
    if not rows:
        print("No study matches.", file=out)
        return EXIT_OK
    print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}:", file=out)
    for r in rows:
        extra = ""
        if args.show_identifiers:
            extra = f"  patient {r['PatientID']} {r['PatientName']}  accession {r['AccessionNumber']}"
        print(f"  {r['study_uid']}  {r['date'] or '--------'}  {r['modalities'] or '?':8}  "
              f"{r['instances'] if r['instances'] is not None else '?'} image(s)  {r['description']}{extra}", file=out)
    print("Analyse one with: python -m cxr_core.pacs analyse --study STUDY_UID [--push]", file=out)
    return EXIT_OK


def _analyse(args, out) -> int:
    from cxr_core import settings
    from cxr_core.pacs.workflow import analyse_study, push_results, study_rows

    client = _client(args)
    result = analyse_study(client, args.study, classifier=args.model or settings.DEFAULT_CLASSIFIER,
                           age_group=args.age_group, detector=not args.no_detector, heatmap=not args.no_heatmap,
                           include_identifiers=False)
    files = []
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, o in enumerate(result.outputs(), 1):
            for kind, data in (("sr", o.sr_bytes), ("sc", o.sc_bytes)):
                path = args.out / f"result_{i:03d}_{kind}.dcm"
                path.write_bytes(data)
                files.append(str(path))
    code = EXIT_OK
    push_error = None
    if args.push:
        from cxr_core.pacs.client import PacsError

        try:
            push_results(client, result)
        except PacsError as exc:
            push_error, code = str(exc), _KIND_EXIT.get(exc.kind, EXIT_ERROR)
    rows = study_rows(result)
    if args.json:
        doc = {"summary": result.summary(), "instances": rows, "files": files,
               "pushed": result.pushed, "push_error": push_error}
        print(json.dumps(doc, indent=2, default=str), file=out)
        return code
    for r in rows:
        print(f"  {r['#']:>3}. {r['Modality'] or '?':3} {r['View'] or '?':4} {r['Status']:9} "
              f"{r['Quality'] or '':5} {r['Suggestion'] or '':16} {r['Confidence']:>5}  "
              f"boxes {r['Boxes'] if r['Boxes'] != '' else '-'}  {r['Message']}", file=out)
    print(result.summary(), file=out)
    for f in files:
        print(f"  wrote {f}", file=out)
    if args.push:
        print(("Stored: " + result.push_message) if result.pushed else f"NOT stored: {push_error}", file=out)
    elif result.outputs():
        print("Not sent to the PACS (add --push after reviewing).", file=out)
    print(f"{settings.DISCLAIMER}", file=out)
    return code


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    from cxr_core.pacs.client import PacsError

    try:
        if args.command == "search":
            return _search(args, out)
        return _analyse(args, out)
    except PacsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _KIND_EXIT.get(exc.kind, EXIT_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a message, never a traceback (and never the data)
        from cxr_core.models import ModelUnavailableError

        if isinstance(exc, (ModelUnavailableError, FileNotFoundError, KeyError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: unexpected failure ({type(exc).__name__}); nothing was stored.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
