#!/usr/bin/env python3
"""llama.cpp's engine throughput, measured the way `wayfinder bench throughput` measures ours.

    .venv-bench/bin/python scripts/llama_cpp_throughput.py MODEL.gguf [--threads 2]

Uses llama-cpp-python's low-level bindings (llama.cpp itself, no server, no sampling cost that
matters: greedy argmax over the logits in numpy):

- prefill: one 512-token prompt in one `llama_decode` call (n_batch = n_ubatch = 512), from a
  cleared KV cache; the median of --repeats runs.
- decode: c sequences, each with its own 32-token prompt (prefilled together, not timed), then
  --decode-tokens steps of one batch holding one token per sequence; tokens/s is c x steps over
  the time of those steps (as ours: every output token after each request's first).

The prompts are the same token ids `bench throughput` uses, so both engines do the same work.
scripts/to_gguf.py writes the GGUF from a `wayfinder make-model` folder.
"""

import argparse
import statistics
import time

import llama_cpp as l
import numpy as np

DECODE_PROMPT = 32


def prompt(seed: int, length: int, vocab: int) -> list[int]:
    # Same ids as crates/cli/src/bench_throughput.rs `request`.
    return [(seed * 7919 + i * 31) % 1000 + 3 for i in range(length)]


def make_context(model, n_ctx: int, n_batch: int, n_seq: int, threads: int):
    p = l.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = n_batch
    p.n_ubatch = n_batch
    p.n_seq_max = n_seq
    p.n_threads = threads
    p.n_threads_batch = threads
    p.kv_unified = True
    p.no_perf = True
    ctx = l.llama_init_from_model(model, p)
    if not ctx:
        raise SystemExit("llama_init_from_model failed")
    return ctx


def fill(batch, items):
    """items: (token, pos, seq, wants_logits)."""
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, logits) in enumerate(items):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0


def decode(ctx, batch):
    rc = l.llama_decode(ctx, batch)
    if rc != 0:
        raise SystemExit(f"llama_decode returned {rc}")
    l.llama_synchronize(ctx)


def argmax_rows(ctx, rows, vocab: int) -> list[int]:
    """Greedy next tokens of the batch positions `rows` (those that asked for logits)."""
    out = []
    for i in rows:
        ptr = l.llama_get_logits_ith(ctx, i)
        out.append(int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab,)))))
    return out


def bench_prefill(model, vocab, args) -> float:
    ctx = make_context(model, 2048, args.prompt_len, 1, args.threads)
    batch = l.llama_batch_init(args.prompt_len, 0, 1)
    times = []
    for r in range(args.repeats + 1):
        l.llama_memory_clear(l.llama_get_memory(ctx), True)
        toks = prompt(r, args.prompt_len, vocab)
        fill(batch, [(t, i, 0, i == len(toks) - 1) for i, t in enumerate(toks)])
        start = time.perf_counter()
        decode(ctx, batch)
        argmax_rows(ctx, [args.prompt_len - 1], vocab)
        if r > 0:  # the first run warms up
            times.append(time.perf_counter() - start)
    l.llama_batch_free(batch)
    l.llama_free(ctx)
    return args.prompt_len / statistics.median(times)


def bench_decode(model, vocab, c: int, args) -> float:
    n_ctx = c * (DECODE_PROMPT + args.decode_tokens + 8)
    ctx = make_context(model, max(n_ctx, 256), max(c * DECODE_PROMPT, 512), c, args.threads)
    batch = l.llama_batch_init(max(c * DECODE_PROMPT, 512), 0, c)
    items = []
    for s in range(c):
        toks = prompt(s, DECODE_PROMPT, vocab)
        items += [(t, i, s, i == DECODE_PROMPT - 1) for i, t in enumerate(toks)]
    fill(batch, items)
    decode(ctx, batch)
    nxt = argmax_rows(ctx, [s * DECODE_PROMPT + DECODE_PROMPT - 1 for s in range(c)], vocab)
    start = time.perf_counter()
    for step in range(args.decode_tokens - 1):
        fill(batch, [(nxt[s], DECODE_PROMPT + step, s, True) for s in range(c)])
        decode(ctx, batch)
        nxt = argmax_rows(ctx, range(c), vocab)
    elapsed = time.perf_counter() - start
    l.llama_batch_free(batch)
    l.llama_free(ctx)
    return c * (args.decode_tokens - 1) / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,16,32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    l.llama_backend_init()
    quiet = l.llama_log_callback(lambda level, text, data: None)
    l.llama_log_set(quiet, None)  # `quiet` must outlive every llama.cpp call
    mp = l.llama_model_default_params()
    model = l.llama_model_load_from_file(args.gguf.encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {args.gguf}")
    vocab = l.llama_vocab_n_tokens(l.llama_model_get_vocab(model))

    print(f"llama.cpp {args.gguf}, {args.threads} threads")
    print(f"prefill  {args.prompt_len:>4}-token prompt   {bench_prefill(model, vocab, args):>9.1f} tok/s")
    for c in (int(x) for x in args.concurrency.split(",")):
        print(f"decode   {c:>4} concurrent      {bench_decode(model, vocab, c, args):>9.1f} tok/s",
              flush=True)
    l.llama_model_free(model)


if __name__ == "__main__":
    main()
