#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system packages (Tesseract, Chromium), a virtual environment in .venv,
# a CPU torch where there is no GPU, then the project. Safe to re-run: each step is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! command -v tesseract >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Tesseract (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null
  else
    echo "[setup] Tesseract is missing. Install it, then re-run:" >&2
    echo "        Debian/Ubuntu: sudo apt-get install tesseract-ocr tesseract-ocr-eng" >&2
    echo "        macOS: brew install tesseract" >&2
    exit 1
  fi
fi

# Chromium (headless) checks the HTML leaderboard in a real browser; without it that one test skips.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Chromium (apt-get) for the HTML leaderboard check"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] Chromium is missing: the HTML leaderboard's browser test will skip (Debian: apt-get install chromium)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

# Install torch first, so that nothing later pulls a multi-GB CUDA build onto a machine without a GPU.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "[setup] GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    $PIP install -q "torch==$TORCH_VERSION"
  else
    echo "[setup] no GPU: installing CPU torch==$TORCH_VERSION"
    # Probe the CPU-wheel index once with a short timeout: pip would retry an unreachable index for every package.
    CPU_INDEX=https://download.pytorch.org/whl/cpu
    if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" >/dev/null 2>&1
    then
      $PIP install -q "torch==$TORCH_VERSION" --extra-index-url "$CPU_INDEX" || $PIP install -q "torch==$TORCH_VERSION"
    else
      $PIP install -q "torch==$TORCH_VERSION"
    fi
  fi
fi

# llama-cpp-python (the offline generator/judge backend) has no Linux wheel on PyPI: it compiles here (about 4-8
# minutes on 2 cores). AMX is left out on x86-64: some VMs advertise AMX but fault on its first instruction
# (ldtilecfg). Extra CMake flags (e.g. -DGGML_CUDA=on) can be passed in CMAKE_ARGS.
if ! "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  if ! command -v c++ >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
  fi
  LLAMA_CMAKE="-DLLAVA_BUILD=OFF"
  if [ "$(uname -m)" = x86_64 ]; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    LLAMA_CMAKE="$LLAMA_CMAKE -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
  fi
  echo "[setup] building llama-cpp-python (a few minutes)"
  # --no-cache-dir: a cached wheel may have been built with other flags (pip does not key its cache on CMAKE_ARGS)
  CMAKE_ARGS="$LLAMA_CMAKE ${CMAKE_ARGS:-}" $PIP install -q --no-cache-dir "llama-cpp-python[server]>=0.3.9,<0.4"
fi

echo "[setup] installing the project and its dependencies"
$PIP install -q -e ".[dev,faiss]"
"$VENV/bin/python" -c "import harness.compat, colpali_engine, mteb; print('[setup] ok: mteb', mteb.__version__)"
