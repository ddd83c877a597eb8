#!/usr/bin/env bash
# Create the reference nnU-Net v2 environment used by the benchmarks, in its own venv.
#
#   benchmarks/setup_nnunetv2.sh            # idempotent: does nothing when already installed
#   NNUNETV2_VERSION=2.8.1 PYTHON=python3.11 benchmarks/setup_nnunetv2.sh
#
# The venv lives at .bench/nnunetv2-venv (repo-relative, git-ignored). torch is installed FIRST and pinned to
# the CPU wheel (pip picks it from the local wheel store on the dev machines); a bare "torch" requirement pulled
# in later by nnunetv2 is then already satisfied and does not fetch a multi-GB CUDA build.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NNUNETV2_VENV:-$REPO_ROOT/.bench/nnunetv2-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
NNUNETV2_VERSION="${NNUNETV2_VERSION:-2.8.1}"

if [[ -x "$VENV/bin/python" ]] \
    && "$VENV/bin/python" -c "import importlib.metadata as m, sys; \
sys.exit(0 if m.version('nnunetv2') == '$NNUNETV2_VERSION' and m.version('torch').startswith('$TORCH_VERSION') else 1)" \
        2>/dev/null; then
    echo "nnunetv2==$NNUNETV2_VERSION already installed in $VENV"
    exit 0
fi

pip_install() {  # drop the per-package "local index ... is ignored" warnings some machines' pip config prints
    "$VENV/bin/python" -m pip install --quiet "$@" 2> >(grep -v "is ignored: it is neither a file" >&2)
}

mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip_install --upgrade pip
pip_install "torch==$TORCH_VERSION"
pip_install "nnunetv2==$NNUNETV2_VERSION" "torch==$TORCH_VERSION"
"$VENV/bin/python" - <<EOF
import importlib.metadata as m
print("installed:", {p: m.version(p) for p in ("nnunetv2", "torch", "dynamic_network_architectures")})
EOF
