#!/usr/bin/env bash
# Engine throughput, side by side: `wayfinder bench throughput` and llama.cpp (through
# llama-cpp-python's low-level bindings, scripts/llama_cpp_throughput.py) on the same
# random-weight SmolLM2-135M, same dtype, same threads, same prompts, on this machine.
#
#   scripts/compare_llama_cpp_engine.sh          # f32 and bf16, 3 rounds each
#   DTYPES=bf16 ROUNDS=5 scripts/compare_llama_cpp_engine.sh
#
# Each round runs both engines one after the other (alternating which goes first) and prints
# prefill tokens/s (512-token prompt) and aggregate decode tokens/s at 1, 8, 16 and 32 concurrent
# sequences; the end prints the per-figure medians over the rounds and the ratios. Run it on a
# quiet machine: on 2 cores any other work shows in the figures.
#
# Needs .venv-bench with llama-cpp-python, gguf, safetensors and numpy (scripts/
# compare_llama_cpp.sh installs them; the first install compiles llama.cpp, ~15 min on 2 cores).
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DTYPES=${DTYPES:-"f32 bf16"}
THREADS=${THREADS:-$(nproc)}
CONCURRENCY=${CONCURRENCY:-1,8,16,32}
WORK=${WORK:-target/compare-llama-cpp}
VENV=.venv-bench
PY="$VENV/bin/python"
MODEL_NAME=smollm2-135m

[ -x "$PY" ] || { echo "no $VENV: run scripts/compare_llama_cpp.sh once (it installs it)" >&2; exit 1; }
mkdir -p "$WORK"
cargo build --release -p wayfinder
BIN=target/release/wayfinder

for DTYPE in $DTYPES; do
    MODEL_DIR="$WORK/$MODEL_NAME-$DTYPE"
    GGUF="$WORK/$MODEL_NAME-$DTYPE.gguf"
    if [ ! -f "$GGUF" ]; then
        "$BIN" make-model --shape "$MODEL_NAME" --dtype "$DTYPE" --out "$MODEL_DIR"
        "$PY" scripts/to_gguf.py "$MODEL_DIR" "$GGUF" --pad-vocab
    fi
    OUT="$WORK/engine-$DTYPE.txt"
    : > "$OUT"
    for round in $(seq 1 "$ROUNDS"); do
        run_wayfinder() {
            RAYON_NUM_THREADS=$THREADS "$BIN" bench throughput --model "$MODEL_DIR" --dtype "$DTYPE" \
                --concurrency "$CONCURRENCY" | grep -E '^(prefill|decode)' | sed 's/^/wayfinder /' >> "$OUT"
        }
        run_llama() {
            "$PY" scripts/llama_cpp_throughput.py "$GGUF" --threads "$THREADS" \
                --concurrency "$CONCURRENCY" | grep -E '^(prefill|decode)' | sed 's/^/llama.cpp /' >> "$OUT"
        }
        if [ $((round % 2)) = 1 ]; then run_wayfinder; run_llama; else run_llama; run_wayfinder; fi
        echo "round $round of $DTYPE done" >&2
    done
    echo "== $MODEL_NAME $DTYPE, $THREADS threads, medians of $ROUNDS rounds (tok/s)"
    "$PY" - "$OUT" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    engine, kind, n, *rest = line.split()
    runs[(engine, f"{kind} {n}")].append(float(rest[-2]))
figures = list(dict.fromkeys(k for _, k in runs))
print(f"{'':14}{'wayfinder':>12}{'llama.cpp':>12}{'ratio':>8}")
for f in figures:
    w = statistics.median(runs[("wayfinder", f)])
    l = statistics.median(runs[("llama.cpp", f)])
    label = "prefill 512" if f.startswith("prefill") else f"decode x{f.split()[1]}"
    print(f"{label:14}{w:12.1f}{l:12.1f}{w / l:7.2f}x")
EOF
done
