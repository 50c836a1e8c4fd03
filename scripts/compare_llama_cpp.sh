#!/usr/bin/env bash
# Serving under load, side by side: `wayfinder serve` and llama.cpp's `llama-server` (continuous
# batching over -np slots) on the same GGUF file, measured by the same `wayfinder bench serve`.
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin scripts/compare_llama_cpp.sh
#   CONCURRENCIES="1 16" ROUNDS=3 TYPE=Q8_0 LLAMA_BIN=... scripts/compare_llama_cpp.sh
#
# For each concurrency C in CONCURRENCIES (default "1 4 16"):
# 1. starts both servers on loopback on the file: wayfinder with `--max-num-seqs C`, llama-server
#    with `-np C -c C*CTX` (each slot gets CTX tokens of context) and THREADS threads (wayfinder's
#    forward pass uses one thread per core: $(nproc) here);
# 2. one warm-up run each, then ROUNDS rounds of the same `bench serve` (same prompts: the
#    round's seed) against each, alternating which goes first;
# 3. prints each server's medians over the rounds and the ratios wayfinder / llama.cpp.
#
# The file: the real SmolLM2-135M-Instruct Q4_1 GGUF (`scripts/fetch-smollm2.sh`) as shipped, or
# with TYPE=Q8_0|Q4_K_M|BF16 the file `llama-quantize` makes from it. LLAMA_BIN is a llama.cpp
# build's bin folder (docs/BENCHMARKS.md says how the one measured there was built).
#
# Every request produces exactly OUTPUT_LEN tokens: both servers take `ignore_eos`. Sampling is
# greedy on both (`temperature: 0`) with no repetition penalty.
#
# Knobs (environment): ROUNDS, NUM_PROMPTS (default 4×C, at least 8), CONCURRENCIES, INPUT_LEN,
# OUTPUT_LEN, CTX, THREADS, TYPE, WAYFINDER_BIN, WAYFINDER_PORT, LLAMA_PORT, WORK.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${LLAMA_BIN:?set LLAMA_BIN to the bin folder of a llama.cpp build}"
ROUNDS=${ROUNDS:-3}
CONCURRENCIES=${CONCURRENCIES:-"1 4 16"}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-64}
CTX=${CTX:-512}
THREADS=${THREADS:-2}
TYPE=${TYPE:-Q4_1}
WAYFINDER_PORT=${WAYFINDER_PORT:-8101}
LLAMA_PORT=${LLAMA_PORT:-8102}
WORK=${WORK:-target/compare-llama-cpp}
MODEL_NAME=smollm2
export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

mkdir -p "$WORK"
log() { printf '\n== %s\n' "$*" >&2; }

if [ -n "${WAYFINDER_BIN:-}" ]; then
    BIN=$WAYFINDER_BIN
else
    cargo build --release -p wayfinder
    BIN=target/release/wayfinder
fi
Q4_1=$(scripts/fetch-smollm2.sh)
GGUF="${Q4_1%.Q4_1.gguf}.$TYPE.gguf"
if [ ! -f "$GGUF" ]; then
    "$LLAMA_BIN/llama-quantize" --allow-requantize "$Q4_1" "$GGUF" "$TYPE" >/dev/null 2>&1
fi

PIDS=()
stop_servers() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ready() { # name port log
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$2/v1/models" >/dev/null; then
            return 0
        fi
        sleep 1
    done
    echo "$1 did not answer on port $2 within 300 s; its log:" >&2
    tail -n 30 "$3" >&2
    exit 1
}

EXTRA_BODY='{"ignore_eos": true, "temperature": 0, "repeat_penalty": 1.0}'
bench() { # name port seed num_prompts concurrency result
    "$BIN" bench serve --base-url "http://127.0.0.1:$2" --endpoint completions \
        --model "$MODEL_NAME" --num-prompts "$4" --request-rate inf \
        --max-concurrency "$5" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
        --seed "$3" --extra-body "$EXTRA_BODY" --result-json "$6" \
        | sed "s/^/[$1 c=$5] /"
}

for C in $CONCURRENCIES; do
    N=${NUM_PROMPTS:-$((4 * C > 8 ? 4 * C : 8))}
    log "concurrency $C: $TYPE, $N prompts of $INPUT_LEN tokens → $OUTPUT_LEN, $THREADS threads"
    "$BIN" serve "$GGUF" --host 127.0.0.1 --port "$WAYFINDER_PORT" \
        --served-model-name "$MODEL_NAME" --max-model-len "$CTX" --max-num-seqs "$C" \
        >"$WORK/wayfinder-c$C.log" 2>&1 &
    PIDS+=($!)
    "$LLAMA_BIN/llama-server" -m "$GGUF" --alias "$MODEL_NAME" --host 127.0.0.1 \
        --port "$LLAMA_PORT" -np "$C" -c $((C * CTX)) -t "$THREADS" -tb "$THREADS" \
        --cont-batching >"$WORK/llama_cpp-c$C.log" 2>&1 &
    PIDS+=($!)
    wait_ready wayfinder "$WAYFINDER_PORT" "$WORK/wayfinder-c$C.log"
    wait_ready llama.cpp "$LLAMA_PORT" "$WORK/llama_cpp-c$C.log"

    bench wayfinder "$WAYFINDER_PORT" 1000 "$C" "$C" "$WORK/warmup-wayfinder-c$C.json"
    bench llama_cpp "$LLAMA_PORT" 1000 "$C" "$C" "$WORK/warmup-llama_cpp-c$C.json"
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) -eq 1 ]; then order="wayfinder llama_cpp"; else order="llama_cpp wayfinder"; fi
        for server in $order; do
            if [ "$server" = wayfinder ]; then port=$WAYFINDER_PORT; else port=$LLAMA_PORT; fi
            bench "$server" "$port" "$round" "$N" "$C" "$WORK/$server-c$C-$round.json" >/dev/null
        done
    done
    stop_servers
done

log "summary ($WORK/*.json)"
python3 - "$WORK" "$ROUNDS" "$OUTPUT_LEN" "$CONCURRENCIES" "$TYPE" <<'EOF'
import json, statistics, sys
work, rounds, output_len, concs, ty = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5]
metrics = [
    ("output tok/s", lambda s: s["output_throughput"], "higher"),
    ("TTFT median ms", lambda s: s["ttft"]["median_ms"], "lower"),
    ("TTFT p99 ms", lambda s: s["ttft"]["p99_ms"], "lower"),
    ("TPOT median ms", lambda s: s["tpot"]["median_ms"], "lower"),
    ("TPOT p99 ms", lambda s: s["tpot"]["p99_ms"], "lower"),
    ("ITL median ms", lambda s: s["itl"]["median_ms"], "lower"),
    ("ITL p99 ms", lambda s: s["itl"]["p99_ms"], "lower"),
]
print(f"{ty}, medians of {rounds} rounds; ratio = wayfinder / llama.cpp")
print("| C | figure | wayfinder | llama.cpp | ratio |")
print("|---|---|---|---|---|")
for c in concs:
    med = {}
    for server in ["wayfinder", "llama_cpp"]:
        runs = [json.load(open(f"{work}/{server}-c{c}-{r}.json"))["summary"] for r in range(1, rounds + 1)]
        failed = sum(run["failed"] for run in runs)
        if failed:
            sys.exit(f"{server} c={c}: {failed} failed requests; see {work}/{server}-c{c}-*.json")
        short = [r["total_output_tokens"] for r in runs if r["total_output_tokens"] < r["completed"] * output_len]
        if short:
            sys.exit(f"{server} c={c}: fewer output tokens than asked ({short})")
        med[server] = {name: statistics.median(f(run) for run in runs) for name, f, _ in metrics}
    for name, _, better in metrics:
        w, l = med["wayfinder"][name], med["llama_cpp"][name]
        print(f"| {c} | {name} ({better} is better) | {w:.1f} | {l:.1f} | {w / l:.2f} |")
EOF
