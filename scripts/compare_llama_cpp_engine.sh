#!/usr/bin/env bash
# Engine throughput, side by side on the same GGUF files: `wayfinder bench throughput` against
# llama.cpp's own `llama-bench` (pp512, tg128) and `llama-batched-bench` (16 sequences, 32-token
# prompts, 128 tokens each), same threads, alternating which goes first, several rounds.
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin scripts/compare_llama_cpp_engine.sh
#   TYPES="Q4_1 Q8_0" ROUNDS=5 LLAMA_BIN=... scripts/compare_llama_cpp_engine.sh
#
# The files: the real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-smollm2.sh) as shipped, and
# Q8_0, Q4_K_M and BF16 files made from it with `llama-quantize --allow-requantize` (cached beside
# it). LLAMA_BIN is a llama.cpp build's bin folder (docs/BENCHMARKS.md says how to build the one
# these figures use). Prints, per file, each figure's median over the rounds for both engines and
# the ratio wayfinder / llama.cpp. Run it on a quiet machine: on 2 cores any other work shows.
# WAYFINDER_BIN runs a given wayfinder binary instead of building this checkout.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${LLAMA_BIN:?set LLAMA_BIN to the bin folder of a llama.cpp build}"
ROUNDS=${ROUNDS:-3}
TYPES=${TYPES:-"Q4_1 Q8_0 Q4_K_M BF16"}
THREADS=${THREADS:-2}
WORK=${WORK:-target/compare-llama-cpp-engine}
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

mkdir -p "$WORK"
Q4_1=$(scripts/fetch-smollm2.sh)
if [ -n "${WAYFINDER_BIN:-}" ]; then
    BIN=$WAYFINDER_BIN   # a binary built elsewhere (e.g. of another commit)
else
    cargo build --release -p wayfinder
    BIN=target/release/wayfinder
fi

file_for() {
    local t=$1 f
    f="${Q4_1%.Q4_1.gguf}.$t.gguf"
    if [ ! -f "$f" ]; then
        "$LLAMA_BIN/llama-quantize" --allow-requantize "$Q4_1" "$f" "$t" > /dev/null 2>&1
    fi
    echo "$f"
}

# Each run appends lines "ENGINE FIGURE TOKENS_PER_S" to $OUT.
run_wayfinder() {
    local f=$1 json
    json="$WORK/wayfinder.json"
    "$BIN" bench throughput --model "$f" --prompt-len 512 --decode-tokens 128 \
        --concurrency 1,16 --repeats 3 --json "$json" > /dev/null
    python3 - "$json" >> "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("wayfinder pp512", r["prefill"]["tokens_per_s"])
for d in r["decode"]:
    name = {1: "tg128", 16: "batched16"}.get(d["concurrency"])
    if name:
        print("wayfinder", name, d["tokens_per_s"])
PY
}

run_llama() {
    local f=$1
    "$LLAMA_BIN/llama-bench" -m "$f" -t "$THREADS" -p 512 -n 128 -r 3 -o json 2> /dev/null |
        python3 -c '
import json, sys
for r in json.load(sys.stdin):
    name = "pp512" if r["n_prompt"] else "tg128"
    print("llama.cpp", name, r["avg_ts"])' >> "$OUT"
    "$LLAMA_BIN/llama-batched-bench" -m "$f" -t "$THREADS" -c 4096 -npp 32 -ntg 128 -npl 16 \
        --output-format jsonl 2> /dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        r = json.loads(line)
        print("llama.cpp batched16", r["speed_tg"])' >> "$OUT"
}

for t in $TYPES; do
    f=$(file_for "$t")
    OUT="$WORK/$t.txt"
    : > "$OUT"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then
            run_wayfinder "$f"; run_llama "$f"
        else
            run_llama "$f"; run_wayfinder "$f"
        fi
    done
    python3 - "$OUT" "$t" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    engine, figure, value = line.split()
    runs[(engine, figure)].append(float(value))
print(f"\n{sys.argv[2]} (medians over the rounds, tokens/s)")
print(f"{'figure':<12}{'wayfinder':>12}{'llama.cpp':>12}{'ratio':>8}")
for figure in ("pp512", "tg128", "batched16"):
    w = statistics.median(runs[("wayfinder", figure)])
    l = statistics.median(runs[("llama.cpp", figure)])
    print(f"{figure:<12}{w:>12.1f}{l:>12.1f}{w / l:>8.2f}")
PY
done
