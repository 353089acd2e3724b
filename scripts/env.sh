# Shared setup for scripts/demo and scripts/test (sourced, not run).
# Installs what is missing from the system package manager and keeps the cargo target directory
# outside the clone so that repeated runs on one machine reuse the (slow, C++) HiGHS build.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hsap/target}"
export HSAP_CACHE="${HSAP_CACHE:-$HOME/.cache/hsap}"
mkdir -p "$CARGO_TARGET_DIR"

# Runs apt-get as root, or through sudo when available.
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing $* (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@" >/dev/null \
        || { $sudo apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

# What building needs: cmake and libclang for HiGHS, a TrueType font for PNG text.
ensure_build_deps() {
    local missing=()
    command -v cmake >/dev/null || missing+=(cmake)
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
    command -v c++ >/dev/null || missing+=(g++)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# What the tests need beyond building: headless Chromium for the report screenshot test, and
# NVRTC (from the nvidia-cuda-nvrtc-cu12 wheel, no GPU needed) to compile the kernels to PTX.
ensure_test_deps() {
    command -v chromium >/dev/null || apt_install chromium
    local venv="$HSAP_CACHE/nvrtc-venv"
    if ! ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 >/dev/null 2>&1; then
        echo "installing nvidia-cuda-nvrtc-cu12 into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "nvidia-cuda-nvrtc-cu12>=12.4,<13"
    fi
    local lib
    lib=$(dirname "$(ls "$venv"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 | head -n 1)")
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
