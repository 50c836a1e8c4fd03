#!/usr/bin/env bash
# The prefix cache under chat-like load, side by side: `wayfinder serve` with its prefix cache
# (the default), the same without it (`--no-enable-prefix-caching`), and llama.cpp's
# `llama-server` with `cache_prompt` — on the same GGUF file, measured by the same
# `wayfinder bench serve`: every request starts with one shared SHARED_PREFIX_LEN-word system
# prompt, followed by a short user turn of INPUT_LEN words.
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin scripts/compare_prefix_cache.sh
#   CONCURRENCIES="1 8" ROUNDS=3 LLAMA_BIN=... scripts/compare_prefix_cache.sh
#
# For each concurrency C in CONCURRENCIES (default "1 8"):
# 1. starts the three servers on loopback: wayfinder with `--max-num-seqs C` (with and without
#    the cache), llama-server with `-np C -c C*CTX` and THREADS threads;
# 2. one warm-up run each (the shared prefix is the same for every seed, so a warm cache is the
#    steady state measured, as for a deployment's system prompt), then ROUNDS rounds of the same
#    `bench serve` (the round's seed: new user turns) against each, rotating which goes first;
# 3. prints each server's medians over the rounds, the cached input tokens each reported, and
#    the ratios to wayfinder with its cache.
#
# Every request produces exactly OUTPUT_LEN tokens (`ignore_eos`); sampling is greedy.
# Knobs (environment): ROUNDS, NUM_PROMPTS (default 4×C, at least 8), CONCURRENCIES,
# SHARED_PREFIX_LEN, INPUT_LEN, OUTPUT_LEN, CTX, THREADS, TYPE, WAYFINDER_BIN, WORK, PORT_BASE.
set -euo pipefail

cd "$(dirname "$0")/.."

: "${LLAMA_BIN:?set LLAMA_BIN to the bin folder of a llama.cpp build}"
ROUNDS=${ROUNDS:-3}
CONCURRENCIES=${CONCURRENCIES:-"1 8"}
SHARED_PREFIX_LEN=${SHARED_PREFIX_LEN:-1000}
INPUT_LEN=${INPUT_LEN:-24}
OUTPUT_LEN=${OUTPUT_LEN:-32}
CTX=${CTX:-2048}
THREADS=${THREADS:-2}
TYPE=${TYPE:-Q4_1}
PORT_BASE=${PORT_BASE:-8110}
WORK=${WORK:-target/compare-prefix-cache}
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

SERVERS="cached uncached llama_cpp"
port_of() {
    case $1 in
        cached) echo "$PORT_BASE" ;;
        uncached) echo $((PORT_BASE + 1)) ;;
        llama_cpp) echo $((PORT_BASE + 2)) ;;
    esac
}

EXTRA_BODY='{"ignore_eos": true, "temperature": 0, "repeat_penalty": 1.0, "cache_prompt": true}'
bench() { # name seed num_prompts concurrency result
    "$BIN" bench serve --base-url "http://127.0.0.1:$(port_of "$1")" --endpoint completions \
        --model "$MODEL_NAME" --num-prompts "$3" --request-rate inf \
        --max-concurrency "$4" --shared-prefix-len "$SHARED_PREFIX_LEN" \
        --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
        --seed "$2" --extra-body "$EXTRA_BODY" --result-json "$5" \
        | sed "s/^/[$1 c=$4] /"
}

for C in $CONCURRENCIES; do
    N=${NUM_PROMPTS:-$((4 * C > 8 ? 4 * C : 8))}
    log "concurrency $C: $TYPE, $N prompts of a $SHARED_PREFIX_LEN-word shared prefix + $INPUT_LEN words → $OUTPUT_LEN tokens"
    for server in cached uncached; do
        flag=()
        if [ "$server" = uncached ]; then flag=(--no-enable-prefix-caching); fi
        "$BIN" serve "$GGUF" --host 127.0.0.1 --port "$(port_of "$server")" \
            --served-model-name "$MODEL_NAME" --max-model-len "$CTX" --max-num-seqs "$C" \
            "${flag[@]}" >"$WORK/$server-c$C.log" 2>&1 &
        PIDS+=($!)
    done
    "$LLAMA_BIN/llama-server" -m "$GGUF" --alias "$MODEL_NAME" --host 127.0.0.1 \
        --port "$(port_of llama_cpp)" -np "$C" -c $((C * CTX)) -t "$THREADS" -tb "$THREADS" \
        --cont-batching >"$WORK/llama_cpp-c$C.log" 2>&1 &
    PIDS+=($!)
    for server in $SERVERS; do
        wait_ready "$server" "$(port_of "$server")" "$WORK/$server-c$C.log"
    done
    for server in $SERVERS; do
        bench "$server" 1000 "$C" "$C" "$WORK/warmup-$server-c$C.json" >/dev/null
    done
    for round in $(seq 1 "$ROUNDS"); do
        case $((round % 3)) in
            1) order="cached uncached llama_cpp" ;;
            2) order="uncached llama_cpp cached" ;;
            0) order="llama_cpp cached uncached" ;;
        esac
        for server in $order; do
            bench "$server" "$round" "$N" "$C" "$WORK/$server-c$C-$round.json" >/dev/null
        done
    done
    stop_servers
done

log "summary ($WORK/*.json)"
python3 - "$WORK" "$ROUNDS" "$OUTPUT_LEN" "$CONCURRENCIES" "$TYPE" <<'EOF'
import json, statistics, sys
work, rounds, output_len, concs, ty = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5]
servers = ["cached", "uncached", "llama_cpp"]
metrics = [
    ("TTFT median ms", lambda s: s["ttft"]["median_ms"]),
    ("TTFT p99 ms", lambda s: s["ttft"]["p99_ms"]),
    ("output tok/s", lambda s: s["output_throughput"]),
    ("total tok/s", lambda s: s["total_token_throughput"]),
    ("input tokens", lambda s: s["total_input_tokens"]),
    ("cached input tokens", lambda s: s.get("total_cached_input_tokens") or 0),
]
print(f"{ty}, medians of {rounds} rounds; ratio = that server / wayfinder with its cache")
print("| C | figure | wayfinder, cache | wayfinder, no cache | llama.cpp | no cache / cache | llama.cpp / cache |")
print("|---|---|---|---|---|---|---|")
for c in concs:
    med = {}
    for server in servers:
        runs = [json.load(open(f"{work}/{server}-c{c}-{r}.json"))["summary"] for r in range(1, rounds + 1)]
        failed = sum(run["failed"] for run in runs)
        if failed:
            sys.exit(f"{server} c={c}: {failed} failed requests; see {work}/{server}-c{c}-*.json")
        short = [r["total_output_tokens"] for r in runs if r["total_output_tokens"] < r["completed"] * output_len]
        if short:
            sys.exit(f"{server} c={c}: fewer output tokens than asked ({short})")
        med[server] = {name: statistics.median(f(run) for run in runs) for name, f in metrics}
    for name, _ in metrics:
        a, b, l = (med[s][name] for s in servers)
        ratio = lambda x: f"{x / a:.2f}" if a else "–"
        print(f"| {c} | {name} | {a:.1f} | {b:.1f} | {l:.1f} | {ratio(b)} | {ratio(l)} |")
EOF
