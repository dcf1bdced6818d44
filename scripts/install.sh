#!/usr/bin/env bash
# Create .venv and install vla-spec with every extra, offline-friendly (PyPI only, no model hub).
# torch/torchvision are pinned first: timm needs torchvision, and a bare `torch` requirement would
# otherwise pull an arbitrary (multi-GB) build. Override with TORCH_SPEC="torch==X torchvision==Y".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e '.[model,sim,dev]'
.venv/bin/python -c "import vla_spec, torch, timm, transformers, libero, mujoco; print('vla-spec', vla_spec.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| timm', timm.__version__, '| mujoco', mujoco.__version__)"
