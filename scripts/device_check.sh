#!/usr/bin/env bash
# The prepared GPU check (issue 19): one command, one JSON and one log.
#
#   bash scripts/device_check.sh --prepare          here, with network: fills .device/ (what travels to the GPU
#                                                   machine: wheels, the ComfyUI 0.33.0 tree; the fixtures travel
#                                                   in the working tree, tests/data/fixtures) and prints the size
#                                                   of everything that travels
#   bash scripts/device_check.sh --out "$OUT"       on the GPU machine, with .device carried: installs what it
#                                                   carries, then runs every section at the real sizes
#   bash scripts/device_check.sh --tiny --out DIR   on a CPU: the same code at tiny sizes (tests/test_device_check.py)
#
# Other arguments go to `python -m kosmosg_core.device_check` (--sections, --total, --budget, --keep, --work).
# Writes DIR/device_check.json (rewritten after every section) and DIR/device_check.log.
# PYTHON picks the interpreter (default python3); KOSMOSG_DEVICE_DIR the carried folder (default .device).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE_DIR=${KOSMOSG_DEVICE_DIR:-.device}
# pins: ComfyUI 0.33.0's requirements.txt (comfy-kitchen, comfy-aimdo), requirements-test.txt (torchsde, torchao)
HOST_WHEELS="comfy-kitchen==0.2.31 comfy-aimdo==0.4.13 torchsde==0.2.6 trampoline==0.1.2"
EXTRA_WHEELS="torchao==0.18.0 bitsandbytes==0.50.2"
COMFY_TARBALL=../shared/hosts/comfyui-0.33.0/comfyui-0.33.0.tar.gz

# Rewrites a wheel without the members matching the given regexes (and their RECORD lines); the name stays.
slim_wheel() {
    "$PREP_PY" - "$@" <<'PY'
import os, re, sys, zipfile
path, patterns = sys.argv[1], [re.compile(p) for p in sys.argv[2:]]
with zipfile.ZipFile(path) as src, zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
        if any(p.search(info.filename) for p in patterns):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(True)
            data = "".join(l for l in lines if not any(p.search(l.split(",")[0]) for p in patterns)).encode()
        dst.writestr(info, data)
os.replace(path + ".tmp", path)
PY
}

download() {  # python version, then requirement specs
    local version=$1
    shift
    "$PREP_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$DEVICE_DIR/whl" "$@"
}

prepare() {
    PREP_PY=${PREP_PYTHON:-.venv/bin/python}
    local transformers sha start=$SECONDS
    transformers=$("$PREP_PY" -c "import transformers; print(transformers.__version__)")
    sha=$(sed -n 's/^COMFY033_SHA256=//p' scripts/run.sh)
    git check-ignore -q "$DEVICE_DIR/x" || echo "/${DEVICE_DIR#./}/" >> "$(git rev-parse --git-path info/exclude)"
    rm -rf "$DEVICE_DIR"
    mkdir -p "$DEVICE_DIR/whl"
    # the device's Python is 3.12; comfy-kitchen is also fetched for 3.11, this machine's, for the simulated run
    download 3.12 "transformers==$transformers" $HOST_WHEELS $EXTRA_WHEELS
    download 3.11 comfy-kitchen==0.2.31
    # comfy-kitchen without its CUDA/HIP kernels (58 MB): they serve fp8/nvfp4/int8 attention, which SD 1.5 in fp16
    # never calls; comfy_kitchen/backends/cuda falls back when _C is absent. bitsandbytes with the CUDA 13.0 library
    # only (the device's torch is cu130) and the CPU one.
    for wheel in "$DEVICE_DIR"/whl/comfy_kitchen-*.whl; do slim_wheel "$wheel" '^comfy_kitchen/backends/(cuda|hip)/_C\.'; done
    slim_wheel "$DEVICE_DIR"/whl/bitsandbytes-*.whl '^bitsandbytes/libbitsandbytes_(rocm|xpu|cuda(?!130))'
    echo "transformers==$transformers $HOST_WHEELS $EXTRA_WHEELS" | tr ' ' '\n' > "$DEVICE_DIR/requirements.txt"
    if [ "$(sha256sum "$COMFY_TARBALL" | cut -d' ' -f1)" != "$sha" ]; then
        echo "error: $COMFY_TARBALL is not the ComfyUI 0.33.0 tree (sha256 differs from $sha)" >&2
        exit 1
    fi
    cp "$COMFY_TARBALL" "$DEVICE_DIR/"
    local carried tree
    carried=$(du -sb "$DEVICE_DIR" | cut -f1)
    tree=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    ls -l "$DEVICE_DIR" "$DEVICE_DIR/whl"
    awk -v c="$carried" -v t="$tree" -v d="$DEVICE_DIR" -v s=$((SECONDS - start)) 'BEGIN { m = 1048576;
        printf "prepared %s in %d s: carried %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB that may travel\n",
               d, s, c / m, t / m, (c + t) / m }'
}

install_carried() {  # wheels into their own folder, ComfyUI unpacked (the tests find tests/data/fixtures)
    local site=${KOSMOSG_DEVICE_SITE:-/tmp/kosmosg-device-site} start=$SECONDS
    if [ -d "$DEVICE_DIR/whl" ]; then
        rm -rf "$site"
        "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$site" --find-links "$DEVICE_DIR/whl" -r "$DEVICE_DIR/requirements.txt" \
            || echo "WARNING: installing the carried wheels failed; the env section shows what is in use"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "installed $(wc -l < "$DEVICE_DIR/requirements.txt") carried packages into $site in $((SECONDS - start)) s"
    fi
    if [ -z "${COMFYUI_PATH:-}" ] && [ -f "$DEVICE_DIR/comfyui-0.33.0.tar.gz" ]; then
        local root=${KOSMOSG_DEVICE_COMFY:-/tmp/kosmosg-device-comfy}
        rm -rf "$root" && mkdir -p "$root"
        tar -xzf "$DEVICE_DIR/comfyui-0.33.0.tar.gz" -C "$root"
        export COMFYUI_PATH="$root/comfyui-0.33.0"
        echo "ComfyUI 0.33.0 unpacked at $COMFYUI_PATH"
    fi
    # PyAV (36 MB) cannot travel; ComfyUI 0.33.0 imports it at start-up for video/audio types only
    if ! "$PYTHON" -c "import av" 2>/dev/null; then
        export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/scripts/device_stubs"
        echo "PyAV absent: scripts/device_stubs/av stands in (any real use raises)"
    fi
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit 0
fi

OUT_DIR=
ARGS=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT_DIR=$2; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -z "$OUT_DIR" ]; then
    echo "usage: bash scripts/device_check.sh [--tiny] --out DIR [args for python -m kosmosg_core.device_check]" >&2
    echo "   or: bash scripts/device_check.sh --prepare" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
set -o pipefail
{
    echo "device_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -m), $("$PYTHON" --version 2>&1), repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    install_carried
    "$PYTHON" -m kosmosg_core.device_check --out "$OUT_DIR" "${ARGS[@]+"${ARGS[@]}"}"
} 2>&1 | tee "$OUT_DIR/device_check.log"
