#!/usr/bin/env bash
# A throw-away Orthanc PACS with DICOMweb on localhost, for development and the tests.
#
#   bash scripts/pacs_dev.sh [--env-file FILE]
#
# Everything is temporary: its own configuration, storage in a fresh temporary folder, a free
# port, HTTP basic auth with a generated password, DICOM (DIMSE) networking off, localhost only.
# It prints the URL and credentials as `export` lines, then runs until Ctrl-C / SIGTERM, when
# it stops Orthanc and deletes the storage. `--env-file FILE` also writes the export lines to
# FILE (mode 600) so another shell can `source` it. The system Orthanc service is not used.
#
# Needs the Debian packages `orthanc` and `orthanc-dicomweb` (.ci/run installs them).
# Overrides: ORTHANC_BIN (the Orthanc executable), ORTHANC_DICOMWEB_PLUGIN (the plugin .so).
set -euo pipefail

env_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) env_file="${2:?--env-file needs a path}"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pacs_dev.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

find_orthanc() {
  if [ -n "${ORTHANC_BIN:-}" ]; then [ -x "$ORTHANC_BIN" ] && echo "$ORTHANC_BIN"; return; fi
  command -v Orthanc 2>/dev/null && return
  for p in /usr/sbin/Orthanc /usr/bin/Orthanc /usr/local/bin/Orthanc /usr/local/sbin/Orthanc; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  return 1
}

find_plugin() {
  if [ -n "${ORTHANC_DICOMWEB_PLUGIN:-}" ]; then [ -f "$ORTHANC_DICOMWEB_PLUGIN" ] && echo "$ORTHANC_DICOMWEB_PLUGIN"; return; fi
  for p in /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* \
           /usr/local/share/orthanc/plugins/libOrthancDicomWeb.so; do
    [ -f "$p" ] && { echo "$p"; return; }
  done
  return 1
}

ORTHANC=$(find_orthanc) || { echo "pacs_dev.sh: Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)" >&2; exit 3; }
PLUGIN=$(find_plugin) || { echo "pacs_dev.sh: the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)" >&2; exit 3; }
PY=$(command -v python3 || command -v python) || { echo "pacs_dev.sh: python3 is needed" >&2; exit 3; }

work=$(mktemp -d "${TMPDIR:-/tmp}/cxr-orthanc.XXXXXX")
chmod 700 "$work"
pid=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  [ -n "$env_file" ] && rm -f "$env_file"
  echo "[pacs_dev] Orthanc stopped, temporary storage deleted." >&2
}
trap cleanup EXIT
trap 'exit 0' INT TERM

user="cxr"
password=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')

mkdir -p "$work/db"
"$PY" - "$work" "$port" "$user" "$password" "$PLUGIN" <<'EOF'
import json, os, sys
work, port, user, password, plugin = sys.argv[1:]
config = {
    "Name": "cxr-dev-pacs",
    "StorageDirectory": os.path.join(work, "db"),
    "IndexDirectory": os.path.join(work, "db"),
    "Plugins": [plugin],
    "HttpServerEnabled": True,
    "HttpPort": int(port),
    "RemoteAccessAllowed": False,        # localhost only
    "AuthenticationEnabled": True,
    "RegisteredUsers": {user: password},
    "DicomServerEnabled": False,         # DICOMweb only: no DIMSE port to collide with
    "OrthancExplorerEnabled": True,
    "WebDavEnabled": False,
    "HttpDescribeErrors": True,
    "ConcurrentJobs": 1,
    "StorageCompression": False,
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": "127.0.0.1:" + port,
                 "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
}
path = os.path.join(work, "orthanc.json")
with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
    json.dump(config, fh, indent=2)
EOF

"$ORTHANC" "$work/orthanc.json" >"$work/orthanc.log" 2>&1 &
pid=$!

url="http://127.0.0.1:$port"
ready=""
for _ in $(seq 1 300); do  # Orthanc starts in about a second; allow a slow shared machine
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  if "$PY" - "$url/dicom-web/studies" "$user" "$password" <<'EOF' 2>/dev/null
import base64, sys, urllib.request
url, user, password = sys.argv[1:]
req = urllib.request.Request(url, headers={
    "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
    "Accept": "application/dicom+json"})
urllib.request.urlopen(req, timeout=2).read()
EOF
  then ready=1; break; fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "[pacs_dev] Orthanc did not start; the end of its log:" >&2
  tail -n 20 "$work/orthanc.log" >&2 || true
  exit 1
fi

exports="export CXR_PACS_URL=$url/dicom-web
export CXR_PACS_USER=$user
export CXR_PACS_PASSWORD=$password"
if [ -n "$env_file" ]; then
  (umask 077; printf '%s\n' "$exports" >"$env_file")
fi
echo "[pacs_dev] throw-away Orthanc $("$ORTHANC" --version 2>/dev/null | head -n1 | awk '{print $NF}') is running (pid $pid). Use it from another shell with:"
printf '%s\n' "$exports"
echo "[pacs_dev] Orthanc Explorer: $url/app/explorer.html (same user and password)"
echo "[pacs_dev] ready. Ctrl-C stops it and deletes $work"
wait "$pid" || true
echo "[pacs_dev] Orthanc exited on its own; the end of its log:" >&2
tail -n 20 "$work/orthanc.log" >&2 || true
exit 1
