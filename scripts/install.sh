#!/usr/bin/env bash
# Create .venv with the locked stack and vla-spec (editable, every extra): uv.lock pins every package
# to one version and its hashes (PyPI only, no model hub), so every install gets the stack CI ran.
# uv itself comes from PyPI into .uv/ (pinned). torch 2.14.1 is PyPI's Linux build, the CUDA 13 one:
# it runs on CPU too; README.md ("Install") says why there is no CPU-only build here.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
UV_VERSION=0.13.9
if [ ! -x .uv/bin/uv ] || [ "$(.uv/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$PYTHON" -m venv .uv
    .uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
# --frozen: install exactly uv.lock (never re-resolve); --seed: pip in .venv for later experiments
[ -x .venv/bin/python ] || .uv/bin/uv venv -q --seed --python "$PYTHON" .venv
.uv/bin/uv sync -q --frozen --all-extras --inexact --compile-bytecode --python .venv/bin/python
.venv/bin/python -c "import vla_spec, torch, timm, transformers, libero, mujoco; print('vla-spec', vla_spec.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| timm', timm.__version__, '| mujoco', mujoco.__version__)"
