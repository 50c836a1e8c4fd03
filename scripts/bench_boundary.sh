#!/usr/bin/env bash
# The cost of the process boundary: the same `wayfinder bench serve` against
# `wayfinder serve` (engine in process) and `wayfinder serve --engine-process` (engine core in a
# child process, over a Unix socket), alternating, on the demo model.
#
#   scripts/bench_boundary.sh [CONCURRENCY] [ROUNDS]     (defaults: 16 and 2)
#
# Needs `cargo build --release -p wayfinder`. Prints each run's summary lines.
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-16}
rounds=${2:-2}
prompts=$((concurrency * 16))
bin=target/release/wayfinder
port=8411
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for mode in in-process engine-process; do
    extra=()
    [ "$mode" = engine-process ] && extra=(--engine-process)
    "$bin" serve demo --port "$port" --num-kv-blocks 2048 --max-num-seqs 32 "${extra[@]}" \
      > "$out/serve.log" 2>&1 &
    server=$!
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 0.1; done
    "$bin" bench serve --base-url "http://127.0.0.1:$port" --endpoint completions \
      --num-prompts "$prompts" --max-concurrency "$concurrency" --input-len 64 --output-len 64 \
      --seed 1 > "$out/bench.txt" 2>&1
    kill -TERM "$server"
    wait "$server" || true
    echo "== $mode, round $round, concurrency $concurrency"
    grep -E "Failed|Request throughput|Output token throughput|Median TTFT|P99 TTFT|Median TPOT|Median ITL|P99 ITL" "$out/bench.txt"
  done
done
