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

# Every file probe below looks under $HSAP_SYSROOT (empty: the real root), so that
# tests/setup_script.rs can run the checks against a fake tree.
sysroot="${HSAP_SYSROOT:-}"

# True when a path matching one of the globs exists under the sysroot.
exists_under_root() {
    local pattern
    for pattern in "$@"; do
        compgen -G "$sysroot$pattern" >/dev/null && return 0
    done
    return 1
}

# bindgen (through clang-sys) dlopens a libclang from LIBCLANG_PATH or the LLVM and multiarch
# library directories, and skips `libclang-cpp*` (clang-sys build/common.rs, search_directory).
# Debian installs `libclang-cpp.so.N` with llvm, so a loose glob (libclang*) finds a library
# bindgen will never load. We ask for the unversioned `libclang.so` / `libclang-N.so` that the
# -dev package installs, and for clang's builtin headers (stddef.h, from libclang-common-N-dev,
# which the -dev package pulls in): bindgen fails without them even when a versioned runtime
# library (libclang1-N) is present.
has_libclang() {
    # Quoted: the globs are expanded under the sysroot by exists_under_root, not here.
    local lib=('/usr/lib/llvm-*/lib/libclang.so' '/usr/lib/*-linux-gnu/libclang-[0-9]*.so' '/usr/lib/libclang.so'
        '/usr/local/lib/libclang.so')
    local headers=('/usr/lib/llvm-*/lib/clang/*/include/stddef.h' '/usr/lib/clang/*/include/stddef.h'
        '/usr/local/lib/clang/*/include/stddef.h')
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        lib+=("$LIBCLANG_PATH/libclang.so" "$LIBCLANG_PATH/libclang-[0-9]*.so")
        headers+=("$LIBCLANG_PATH/clang/*/include/stddef.h")
    fi
    exists_under_root "${lib[@]}" && exists_under_root "${headers[@]}"
}

# The Debian packages building needs that are not here, one per line: cmake and a C++ compiler
# for HiGHS, libclang for its bindgen step, and the TrueType font that src/report/font.rs reads
# (unless HSAP_FONT names one). The font check is last because of its early return.
missing_build_deps() {
    command -v cmake >/dev/null || echo cmake
    command -v c++ >/dev/null || echo g++
    has_libclang || echo libclang-dev
    [ -n "${HSAP_FONT:-}" ] && [ -f "$HSAP_FONT" ] && return
    exists_under_root /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || echo fonts-dejavu-core
}

ensure_build_deps() {
    local missing
    mapfile -t missing < <(missing_build_deps)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# The Debian packages the tests need beyond building, one per line: headless Chromium for the
# report's browser test (tests/report_chromium.rs looks for these names), and a Python that can
# make a virtual environment (Debian's python3 needs python3-venv for ensurepip).
missing_test_deps() {
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || echo chromium
    command -v python3 >/dev/null || { echo python3; echo python3-venv; return; }
    python3 -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv
}

# What the tests need beyond building: the packages above, and NVRTC (from the
# nvidia-cuda-nvrtc-cu12 wheel, no GPU needed) to compile the kernels to PTX.
ensure_test_deps() {
    local missing
    mapfile -t missing < <(missing_test_deps)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    local venv="$HSAP_CACHE/nvrtc-venv"
    if ! compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" >/dev/null; then
        echo "installing nvidia-cuda-nvrtc-cu12 into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "nvidia-cuda-nvrtc-cu12>=12.4,<13"
    fi
    local lib
    lib=$(dirname "$(compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" | head -n 1)")
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ensure_cudnn
}

# cuDNN's graph libraries from the nvidia-cudnn-cu12 wheel (pinned; no GPU needed), for
# tests/cudnn_graphs.rs, which hands --kernels cudnn's attention graphs to it: only the three
# libraries it loads to finalize graphs are kept (163 MB of the wheel's 717 MB). Named in
# HSAP_CUDNN_LIB_DIR, not put on LD_LIBRARY_PATH: the test gives them to a child process.
CUDNN_WHEEL_VERSION=9.28.0.42
ensure_cudnn() {
    local dir="$HSAP_CACHE/cudnn-$CUDNN_WHEEL_VERSION"
    local libs=(libcudnn.so.9 libcudnn_graph.so.9 libcudnn_engines_runtime_compiled.so.9)
    if [ ! -e "$dir/${libs[2]}" ]; then
        echo "fetching cuDNN's graph libraries (nvidia-cudnn-cu12==$CUDNN_WHEEL_VERSION) into $dir" >&2
        local tmp
        tmp=$(mktemp -d)
        # The NVRTC venv's pip (ensure_test_deps made it): Debian's python3 has none of its own.
        "$HSAP_CACHE/nvrtc-venv/bin/pip" download --quiet --no-deps --dest "$tmp" "nvidia-cudnn-cu12==$CUDNN_WHEEL_VERSION"
        mkdir -p "$dir.partial"
        python3 - "$tmp"/nvidia_cudnn_cu12-*.whl "$dir.partial" "${libs[@]}" <<'PY'
import shutil, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"nvidia/cudnn/lib/{name}") as src, open(f"{out}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
        rm -rf "$tmp" "$dir"
        mv "$dir.partial" "$dir"
    fi
    export HSAP_CUDNN_LIB_DIR="$dir"
    # tests/cudnn_graphs.rs fails instead of skipping when cuDNN is missing.
    export HSAP_REQUIRE_CUDNN=1
}

# The Python package in a cached virtual environment: maturin and pytest once (pinned), then
# python/ reinstalled on every call without build isolation, so that maturin's cargo build reuses
# $CARGO_TARGET_DIR and only recompiles what changed.
ensure_python_package() {
    local venv="$HSAP_CACHE/python-venv"
    if [ ! -x "$venv/bin/maturin" ] || [ ! -x "$venv/bin/pytest" ]; then
        echo "making $venv (maturin, pytest)" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "maturin>=1.9,<2" "pytest>=7,<9"
    fi
    # maturin's build backend runs the maturin on PATH: the venv's.
    PATH="$venv/bin:$PATH" "$venv/bin/pip" install --quiet --no-build-isolation --no-deps --force-reinstall ./python
}
