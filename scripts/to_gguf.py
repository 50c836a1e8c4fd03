#!/usr/bin/env python3
"""Convert a Llama folder written by `wayfinder make-model` into GGUF for llama.cpp.

The folder holds config.json, model.safetensors (Hugging Face Llama tensor names),
tokenizer.json (a byte-level BPE trained by wayfinder) and tokenizer_config.json. The GGUF file
is what llama.cpp's convert_hf_to_gguf.py writes for such a Llama:

- architecture `llama` with the context length, widths, head counts, rope theta and RMS eps;
- the llama.cpp tensor names, with the Q and K projections permuted from Hugging Face's
  rotary layout (halves) to llama.cpp's (interleaved pairs);
- weights in the folder's dtype (f32, f16 or bf16), norms in f32 as llama.cpp keeps them;
  tied embeddings: no `output.weight`;
- the tokenizer as `gpt2` (byte-level BPE, GPT-2 pre-tokenizer), with every token, its type and
  the merges; ids the model has but the tokenizer lacks become unused `[PAD{id}]` tokens.

`--pad-vocab` first rewrites the folder's tokenizer.json so that every id of the model's
vocabulary is a token with visible text (`<pad_{id}>`, reachable by no merge, so prompts
tokenize as before). Random weights pick such ids most of the time; without text, neither server
streams anything for them and time-to-first-token could not be measured.

Usage: to_gguf.py MODEL_DIR OUT.gguf [--pad-vocab]
Needs: pip install gguf numpy
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np

import gguf

# safetensors dtype -> how its bytes are viewed (bf16 stays raw 16-bit words).
ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}

# File types as llama.cpp names them.
FILE_TYPES = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "BF16": gguf.LlamaFileType.MOSTLY_BF16,
}

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def read_safetensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of one safetensors file as (dtype name, array view of the mapped file)."""
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    (header_len,) = struct.unpack("<Q", mapped[:8].tobytes())
    header = json.loads(mapped[8 : 8 + header_len].tobytes())
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in ST_DTYPES:
            sys.exit(f"{path}: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")
        start, end = info["data_offsets"]
        data = mapped[base + start : base + end].view(ST_DTYPES[dtype]).reshape(info["shape"])
        tensors[name] = (dtype, data)
    return tensors


def read_weights(folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """The folder's tensors, from model.safetensors or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(read_safetensors(folder / f))
    return tensors


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Hugging Face's rotary layout to llama.cpp's, as convert_hf_to_gguf.py's LlamaModel."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m is None or m.group(2) not in LAYER_NAMES:
        sys.exit(f"unexpected tensor {hf_name}: not a Llama tensor")
    return f"blk.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"


def pad_vocab(folder: Path, vocab_size: int) -> None:
    """Gives every id below `vocab_size` a token with visible text in tokenizer.json."""
    path = folder / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8"))
    taken = set(tok["model"]["vocab"].values()) | {t["id"] for t in tok["added_tokens"]}
    missing = [i for i in range(vocab_size) if i not in taken]
    for i in missing:
        tok["model"]["vocab"][f"<pad_{i}>"] = i
    path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    print(f"{path}: {len(missing)} ids given visible tokens")


def tokenizer_fields(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges, as convert_hf_to_gguf.py's get_vocab_base."""
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    if model["type"] != "BPE" or (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        sys.exit("tokenizer.json is not a byte-level BPE")
    by_id = {i: t for t, i in model["vocab"].items()}
    added = {t["id"]: t for t in tok["added_tokens"]}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            special = added[i].get("special", False)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, types, merges


def convert(folder: Path, out: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "llama":
        sys.exit(f"model_type is {config.get('model_type')!r}; this converter writes Llamas")
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    hidden, vocab_size = config["hidden_size"], config["vocab_size"]
    head_dim = config.get("head_dim", hidden // n_head)
    tensors = read_weights(folder)
    dtypes = {dtype for dtype, t in tensors.values() if t.ndim > 1}
    if len(dtypes) != 1:
        sys.exit(f"mixed weight dtypes {dtypes}")
    (dtype,) = dtypes

    w = gguf.GGUFWriter(out, "llama")
    w.add_name(folder.name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    if "head_dim" in config:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(vocab_size)
    w.add_file_type(FILE_TYPES[dtype])

    tokens, types, merges = tokenizer_fields(folder, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_add_bos_token(bool(tok_config.get("add_bos_token", False)))
    w.add_add_eos_token(False)
    if tok_config.get("chat_template"):
        w.add_chat_template(tok_config["chat_template"])

    tied = config.get("tie_word_embeddings", False)
    for hf_name, (src_dtype, data) in tensors.items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = gguf_name(hf_name)
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_kv)
        if data.ndim == 1:
            # Norms stay f32, as llama.cpp keeps them.
            if src_dtype == "BF16":
                data = (data.astype(np.uint32) << 16).view(np.float32)
            w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        elif src_dtype == "BF16":
            raw = np.ascontiguousarray(data).view(np.uint8)
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, np.ascontiguousarray(data))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({len(tensors) - (tied and 'lm_head.weight' in tensors)} tensors, {dtype})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--pad-vocab",
        action="store_true",
        help="first give every vocabulary id a visible token in the folder's tokenizer.json",
    )
    args = parser.parse_args()
    if args.pad_vocab:
        vocab_size = json.loads((args.model_dir / "config.json").read_text())["vocab_size"]
        pad_vocab(args.model_dir, vocab_size)
    convert(args.model_dir, args.out)


if __name__ == "__main__":
    main()
