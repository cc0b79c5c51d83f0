#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` for the CPU this runs on, from the llama.cpp source that
# ships inside the llama-cpp-python sdist on PyPI, and prints the binary's path on stdout.
# Idempotent: an existing binary is reused. Takes a while on 2 cores (~15-30 min).
#
# The build is Release, native CPU (-march=native: AVX-512 where present), with no network
# features (no CURL/OpenSSL, no downloaded web UI), and only the llama-server target.
#
# AMX is compiled out (-mno-amx-*) unless LLAMA_AMX=1: on VMs whose CPUID advertises AMX
# without the hypervisor enabling it, ggml's AMX matmul died with SIGSEGV on its first
# `ldtilecfg` here. qwen-serve asks the kernel for AMX state at run time and uses its AMX
# kernels only when granted (QWEN_SERVE_CPU_ISA=avx512 turns them off), so on an AMX machine
# compare like with like: both with AMX (LLAMA_AMX=1) or both without. CPUs without AMX
# (AMD, older Intel) build the same code either way.
#
# LLAMA_CPP_PYTHON_VERSION pins the sdist (default below); QWEN_SERVE_LLAMA_DIR overrides the
# cache directory (default ~/.cache/qwen-serve/llama.cpp). JOBS sets the build parallelism.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${QWEN_SERVE_LLAMA_DIR:-$HOME/.cache/qwen-serve/llama.cpp}"
src="$cache/llama-cpp-python-$version"
if [ "${LLAMA_AMX:-0}" = 1 ]; then
  variant=native
  isa_flags=""
else
  variant=native-noamx
  isa_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
build="$cache/build-$version-$variant"
bin="$build/bin/llama-server"
jobs="${JOBS:-2}"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "cmake missing: installing it with apt-get…" >&2
  apt-get install -y cmake >&2 || { apt-get update >&2 && apt-get install -y cmake >&2; }
fi
cmake --version | head -1 >&2

mkdir -p "$cache"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  echo "fetching llama-cpp-python $version (sdist) from PyPI…" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Only this package as source: its build dependencies (scikit-build-core, cmake) may come as
  # wheels, which pip needs to read the sdist's metadata. `--no-binary :all:` would make pip
  # compile CMake itself from source first.
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$version" >&2
  tar xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$tmp"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$version" "$src"
fi

echo "building llama-server in $build (-j$jobs)…" >&2
cmake -S "$src/vendor/llama.cpp" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$isa_flags" \
  -DCMAKE_CXX_FLAGS="$isa_flags" \
  -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$build" --config Release --target llama-server -j "$jobs" >&2

[ -x "$bin" ] || { echo "error: the build finished but $bin is missing" >&2; exit 1; }
echo "$bin"
