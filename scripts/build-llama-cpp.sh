#!/usr/bin/env bash
# Builds the peer the benchmark scripts compare against, once, into a cache outside the
# checkout: llama.cpp as vendored by the PyPI sdist llama-cpp-python==0.3.36, with cmake and
# ninja from PyPI. 10–20 minutes on 2 cores.
#
#   scripts/build-llama-cpp.sh        # prints the bin folder to pass as LLAMA_BIN
#
# Cache: $WAYFINDER_CACHE (default ~/.cache/wayfinder)/llama-build/. The build is native
# (-DGGML_NATIVE=ON) but leaves AMX out: the VMs this was measured on report AMX in
# /proc/cpuinfo, yet a native build's AMX kernels die with SIGILL on the first `tileloadd`.
set -euo pipefail

CACHE=${WAYFINDER_CACHE:-$HOME/.cache/wayfinder}
OUT="$CACHE/llama-build"
TARGETS="llama-server llama-bench llama-batched-bench llama-quantize llama-perplexity llama-tokenize"

if [ ! -x "$OUT/bin/llama-perplexity" ] || [ ! -x "$OUT/bin/llama-tokenize" ]; then
    src="$CACHE/llama-src"
    tools="$CACHE/llama-tools"
    if [ ! -d "$src/vendor/llama.cpp" ]; then
        # `pip download` of an sdist builds its metadata (and wants scikit-build-core): take
        # the file from the index's simple page instead, checked against the digest it states.
        mkdir -p "$src"
        python3 - "$src" <<'PY'
import hashlib, io, re, sys, tarfile, urllib.request
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/").read().decode()
url, digest = re.search(r'href="(https://[^"#]*llama_cpp_python-0\.3\.36\.tar\.gz)#sha256=([0-9a-f]+)"', page).groups()
data = urllib.request.urlopen(url).read()
if hashlib.sha256(data).hexdigest() != digest:
    sys.exit("llama-cpp-python sdist: digest mismatch")
with tarfile.open(fileobj=io.BytesIO(data)) as t:
    for m in t.getmembers():
        m.name = m.name.split("/", 1)[1] if "/" in m.name else ""
        if m.name:
            t.extract(m, sys.argv[1])
PY
    fi
    if [ ! -x "$tools/bin/cmake" ]; then
        python3 -m pip install --quiet --target "$tools/lib" cmake ninja >&2
        mkdir -p "$tools/bin"
        ln -sf "$tools/lib/bin/cmake" "$tools/bin/cmake"
        ln -sf "$tools/lib/bin/ninja" "$tools/bin/ninja"
    fi
    export PATH="$tools/bin:$PATH" PYTHONPATH="$tools/lib${PYTHONPATH:+:$PYTHONPATH}"
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    cmake -S "$src/vendor/llama.cpp" -B "$OUT" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_C_FLAGS="$flags" \
        -DCMAKE_CXX_FLAGS="$flags" >&2
    # shellcheck disable=SC2086
    cmake --build "$OUT" --target $TARGETS -j "$(nproc)" >&2
fi
echo "$OUT/bin"
