#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt.
# Idempotent: a stamp file records the hash of requirements.txt, so a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements (first run takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: the CPU machines take these from local disk.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -r requirements.txt
  # ultralytics depends on opencv-python, which needs libGL (absent on servers): keep the headless build only.
  if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y opencv-python
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "$(grep '^opencv-python-headless' requirements.txt)"
  fi
  echo "$want" > "$stamp"
fi
# Ultralytics must never reach the network (fonts, weights, hub); see cxr_core/detection.
export YOLO_OFFLINE=1
