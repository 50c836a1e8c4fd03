#!/usr/bin/env bash
# Serving under load, side by side: wayfinder and llama.cpp (llama-cpp-python's OpenAI server)
# on the same random-weight SmolLM2-135M, measured by the same `wayfinder bench serve`.
#
#   scripts/compare_llama_cpp.sh            # from the repository root or anywhere
#
# 1. installs llama-cpp-python[server], gguf, safetensors and numpy into .venv-bench (the first
#    time, pip compiles llama.cpp for the machine: about 15 minutes on 2 cores);
# 2. builds wayfinder (release), writes the model (`make-model --shape smollm2-135m`) and
#    converts it to GGUF in the same dtype (scripts/to_gguf.py --pad-vocab: every vocabulary id
#    gets a visible token in both, so both servers stream every token);
# 3. starts both servers on loopback with the same context length, thread count and
#    concurrency; waits for GET /v1/models on each;
# 4. runs one warm-up and then ROUNDS rounds of the same `bench serve` (same prompts: the
#    round's seed) against each, alternating which goes first;
# 5. prints each server's medians over the rounds and the ratios wayfinder / llama.cpp.
#
# Knobs (environment): ROUNDS, NUM_PROMPTS, CONCURRENCY, REQUEST_RATE, INPUT_LEN, OUTPUT_LEN,
# DTYPE (f32, f16, bf16), CTX, THREADS, WAYFINDER_PORT, LLAMA_PORT, WORK (output folder).
#
# The same request goes to both: `ignore_eos` (wayfinder) and `min_tokens` (llama-cpp-python)
# make every request produce exactly OUTPUT_LEN tokens; each server ignores the other's field.
# `repeat_penalty: 1.0` turns off llama-cpp-python's default repetition penalty (wayfinder
# applies none unless asked). llama-cpp-python runs one request at a time (it holds a lock
# around its one llama.cpp context); wayfinder batches up to CONCURRENCY.
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
NUM_PROMPTS=${NUM_PROMPTS:-32}
CONCURRENCY=${CONCURRENCY:-4}
REQUEST_RATE=${REQUEST_RATE:-inf}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-64}
DTYPE=${DTYPE:-f32}
CTX=${CTX:-2048}
THREADS=${THREADS:-$(nproc)}
WAYFINDER_PORT=${WAYFINDER_PORT:-8101}
LLAMA_PORT=${LLAMA_PORT:-8102}
WORK=${WORK:-target/compare-llama-cpp}
VENV=.venv-bench
MODEL_NAME=smollm2-135m

mkdir -p "$WORK"
log() { printf '\n== %s\n' "$*" >&2; }

log "python environment ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet 'llama-cpp-python[server]' gguf safetensors numpy
PY="$VENV/bin/python"
"$PY" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'

log "wayfinder (release)"
cargo build --release -p wayfinder
BIN=target/release/wayfinder
"$BIN" --version

MODEL_DIR="$WORK/$MODEL_NAME-$DTYPE"
GGUF="$WORK/$MODEL_NAME-$DTYPE.gguf"
if [ ! -f "$GGUF" ]; then
    log "model: $MODEL_DIR and $GGUF"
    rm -rf "$MODEL_DIR"
    "$BIN" make-model --shape "$MODEL_NAME" --dtype "$DTYPE" --out "$MODEL_DIR"
    "$PY" scripts/to_gguf.py "$MODEL_DIR" "$GGUF" --pad-vocab
fi

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting both servers (context $CTX, $THREADS threads, concurrency $CONCURRENCY)"
# wayfinder's forward pass uses one thread per core (all $(nproc) here).
"$BIN" serve "$MODEL_DIR" --host 127.0.0.1 --port "$WAYFINDER_PORT" \
    --served-model-name "$MODEL_NAME" --max-model-len "$CTX" --max-num-seqs "$CONCURRENCY" \
    >"$WORK/wayfinder.log" 2>&1 &
PIDS+=($!)
# `--interrupt_requests False`: by default llama-cpp-python cuts a running stream short when
# another request arrives, which would make every stream but the last end early.
"$PY" -m llama_cpp.server --model "$GGUF" --model_alias "$MODEL_NAME" --interrupt_requests False \
    --host 127.0.0.1 --port "$LLAMA_PORT" --n_ctx "$CTX" \
    --n_threads "$THREADS" --n_threads_batch "$THREADS" \
    >"$WORK/llama_cpp.log" 2>&1 &
PIDS+=($!)

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
wait_ready wayfinder "$WAYFINDER_PORT" "$WORK/wayfinder.log"
wait_ready llama.cpp "$LLAMA_PORT" "$WORK/llama_cpp.log"

# llama-cpp-python's server ignores `min_tokens`: a random-weight model reaches its end-of-text
# token within a few tokens. A -100 logit bias on it (which wayfinder, not knowing the field,
# ignores; it has `ignore_eos`) keeps every request going to OUTPUT_LEN tokens.
EOS_BIAS=$("$PY" -c 'import json, sys
eos = json.load(open(sys.argv[1])).get("eos_token_id", [])
print(", ".join(f"\"{i}\": -100" for i in (eos if isinstance(eos, list) else [eos])))' "$MODEL_DIR/config.json")
EXTRA_BODY="{\"min_tokens\": $OUTPUT_LEN, \"repeat_penalty\": 1.0, \"logit_bias\": {$EOS_BIAS}}"
bench() { # name port seed num_prompts result
    "$BIN" bench serve --base-url "http://127.0.0.1:$2" --endpoint completions \
        --model "$MODEL_NAME" --num-prompts "$4" --request-rate "$REQUEST_RATE" \
        --max-concurrency "$CONCURRENCY" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
        --seed "$3" --extra-body "$EXTRA_BODY" --result-json "$5" \
        | sed "s/^/[$1] /"
}

log "warm-up (pages the weights in)"
bench wayfinder "$WAYFINDER_PORT" 1000 $((2 * CONCURRENCY)) "$WORK/warmup-wayfinder.json"
bench llama_cpp "$LLAMA_PORT" 1000 $((2 * CONCURRENCY)) "$WORK/warmup-llama_cpp.json"

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    if [ $((round % 2)) -eq 1 ]; then
        order="wayfinder llama_cpp"
    else
        order="llama_cpp wayfinder"
    fi
    for server in $order; do
        if [ "$server" = wayfinder ]; then port=$WAYFINDER_PORT; else port=$LLAMA_PORT; fi
        bench "$server" "$port" "$round" "$NUM_PROMPTS" "$WORK/$server-$round.json"
    done
done

log "summary ($WORK/*.json)"
"$PY" - "$WORK" "$ROUNDS" "$OUTPUT_LEN" <<'EOF'
import json, statistics, sys
work, rounds, output_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
metrics = [
    ("output tok/s", lambda s: s["output_throughput"], "higher is better"),
    ("median TTFT (ms)", lambda s: s["ttft"]["median_ms"], "lower is better"),
    ("median TPOT (ms)", lambda s: s["tpot"]["median_ms"], "lower is better"),
]
medians = {}
for server in ["wayfinder", "llama_cpp"]:
    runs = [json.load(open(f"{work}/{server}-{r}.json"))["summary"] for r in range(1, rounds + 1)]
    failed = sum(run["failed"] for run in runs)
    if failed:
        sys.exit(f"{server}: {failed} failed requests; see {work}/{server}-*.json")
    # Both servers must have done the same work, or the ratios mean nothing.
    short = [r["total_output_tokens"] for r in runs if r["total_output_tokens"] < 0.95 * r["completed"] * output_len]
    if short:
        sys.exit(f"{server}: fewer output tokens than asked ({short}); see {work}/{server}-*.json")
    medians[server] = {name: statistics.median(f(run) for run in runs) for name, f, _ in metrics}
print(f"{'':20} {'wayfinder':>12} {'llama.cpp':>12} {'ratio':>8}")
for name, _, better in metrics:
    w, l = medians["wayfinder"][name], medians["llama_cpp"][name]
    print(f"{name:20} {w:12.2f} {l:12.2f} {w / l:8.2f}   ({better})")
EOF
