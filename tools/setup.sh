#!/usr/bin/env bash
# Creates ./.venv (Python 3.11+), installs wtl_tf with its test extras into it, and installs Debian's
# dataset-fashion-mnist (the quickstart's data, no download needed) when it is missing and apt-get is usable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'

FASHION=/usr/share/datasets/fashion-mnist
if [ ! -d "$FASHION" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  fi
  if [ "$SUDO" != none ]; then
    echo "Installing Debian's dataset-fashion-mnist into $FASHION ..."
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "warning: could not install dataset-fashion-mnist; the quickstart needs the Fashion-MNIST IDX files" \
              "(set WTL_DATA_DIR to a directory with fashion_mnist/)" >&2
  else
    echo "note: not root and no sudo: install dataset-fashion-mnist yourself for the quickstart" >&2
  fi
fi
