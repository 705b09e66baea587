#!/usr/bin/env python3
"""An independent GPT-2 in PyTorch that reads Hugging Face tensors by their HF names.

It shares no code with gpt: it parses model.safetensors itself (8-byte length,
JSON header, raw little-endian data), takes the shape from config.json, and
computes GPT-2 as transformers' GPT2LMHeadModel does (Conv1D weights stored
(in, out), tanh GELU, LayerNorm eps 1e-5, tied head), in float64.

  tools/hf-reference.py make DIR [--seed S]
      Writes a tiny random GPT-2 in HF layout to DIR (model.safetensors written
      by this script, names without the "transformer." prefix and with the
      attention-mask buffers, as OpenAI's released checkpoint has them;
      config.json) and DIR/expected.json: the tokens, the mean loss, the
      per-position losses and the first logits. tests/data/hf-tiny was made so;
      tests/test_hf.cpp checks gpt's loss on it against expected.json.

  tools/hf-reference.py loss DIR TOKENS.json
      Prints {"loss": ..., "losses": [...]} for the model in DIR on the token
      rows of TOKENS.json ([[t0, t1, ...], ...]: each row's inputs are t[:-1],
      its targets t[1:]). tests/test_hf.cpp runs this on gpt's export when torch
      is installed (Debian: apt-get install python3-torch).
"""
import json
import math
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(data[base + b : base + e])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.zeros(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).to(torch.float64)
    return out


def write_safetensors(path, tensors):
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def weight(w, name):
    """A tensor by its HF name, with or without the "transformer." prefix."""
    return w[name] if name in w else w["transformer." + name]


def gpt2_logits(w, cfg, x):
    """x: (B, T) int64 -> logits (B, T, V), float64."""
    L, NH, C = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    B, T = x.shape
    hs = C // NH

    def ln(h, p):
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-5) * weight(w, p + ".weight") + weight(w, p + ".bias")

    def conv1d(h, p):  # HF Conv1D: weight (in, out)
        return h @ weight(w, p + ".weight") + weight(w, p + ".bias")

    def gelu(u):
        return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))

    h = weight(w, "wte.weight")[x] + weight(w, "wpe.weight")[:T]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for l in range(L):
        p = f"h.{l}"
        qkv = conv1d(ln(h, p + ".ln_1"), p + ".attn.c_attn")  # (B, T, 3C): q | k | v
        q, k, v = (z.reshape(B, T, NH, hs).transpose(1, 2) for z in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        h = h + conv1d(y, p + ".attn.c_proj")
        h = h + conv1d(gelu(conv1d(ln(h, p + ".ln_2"), p + ".mlp.c_fc")), p + ".mlp.c_proj")
    h = ln(h, "ln_f")
    return h @ weight(w, "wte.weight").T  # tied head


def losses_of(w, cfg, rows):
    t = torch.tensor(rows, dtype=torch.int64)
    logits = gpt2_logits(w, cfg, t[:, :-1])
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1), reduction="none")
    return logits, losses.reshape(t.shape[0], -1)


def cmd_make(d, seed):
    import os

    os.makedirs(d, exist_ok=True)
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 96, "n_positions": 16, "n_ctx": 16,
           "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": None, "activation_function": "gelu_new",
           "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    g = torch.Generator().manual_seed(seed)
    V, P, C, L = cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"]

    def rnd(*shape, scale=0.1, mean=0.0):
        return (mean + scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(torch.float32)

    t = {"wte.weight": rnd(V, C), "wpe.weight": rnd(P, C, scale=0.05)}
    for l in range(L):
        p = f"h.{l}."
        t[p + "ln_1.weight"], t[p + "ln_1.bias"] = rnd(C, mean=1.0), rnd(C, scale=0.05)
        t[p + "attn.bias"] = torch.tril(torch.ones(P, P)).reshape(1, 1, P, P)  # the mask buffer old checkpoints carry
        t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = rnd(C, 3 * C, scale=0.2), rnd(3 * C, scale=0.05)
        t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = rnd(C, C), rnd(C, scale=0.05)
        t[p + "ln_2.weight"], t[p + "ln_2.bias"] = rnd(C, mean=1.0), rnd(C, scale=0.05)
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = rnd(C, 4 * C), rnd(4 * C, scale=0.05)
        t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = rnd(4 * C, C), rnd(C, scale=0.05)
    t["ln_f.weight"], t["ln_f.bias"] = rnd(C, mean=1.0), rnd(C, scale=0.05)
    write_safetensors(f"{d}/model.safetensors", t)
    with open(f"{d}/config.json", "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    # Two rows of 13 tokens: 12 positions each, fewer than n_positions.
    rows = torch.randint(0, V, (2, 13), generator=g).tolist()
    w = read_safetensors(f"{d}/model.safetensors")  # what was written, read back as a reader would
    logits, losses = losses_of(w, cfg, rows)
    exp = {"tokens": rows, "loss": losses.mean().item(), "losses": losses.tolist(), "logits_row0_pos0": logits[0, 0].tolist(),
           "made_by": f"tools/hf-reference.py make --seed {seed} (torch {torch.__version__}, float64)"}
    with open(f"{d}/expected.json", "w") as f:
        json.dump(exp, f, indent=1)
        f.write("\n")
    print(json.dumps({"loss": exp["loss"]}))


def cmd_loss(d, tokens_file):
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    with open(tokens_file) as f:
        rows = json.load(f)
    w = read_safetensors(f"{d}/model.safetensors")
    _, losses = losses_of(w, cfg, rows)
    print(json.dumps({"loss": losses.mean().item(), "losses": losses.tolist()}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) >= 2 and a[0] == "make":
        cmd_make(a[1], int(a[a.index("--seed") + 1]) if "--seed" in a else 1234)
    elif len(a) == 3 and a[0] == "loss":
        cmd_loss(a[1], a[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
