#!/usr/bin/env python3
"""Loads a `gpt export hf` folder with transformers itself and compares its loss.

  tools/hf-transformers-check.py DIR [TOKENS.json]

DIR is a folder written by `gpt export hf`; TOKENS.json holds token rows
([[t0, t1, ...], ...], default: two rows of random ids below the vocabulary).
It loads DIR with transformers' GPT2LMHeadModel.from_pretrained (and the
tokenizer with AutoTokenizer when DIR has one), computes the mean loss on the
rows in float32 on the GPU when there is one, computes the same loss with
tools/hf-reference.py's independent float64 GPT-2, and prints both; exit code 1
when they differ by more than 1e-4 relative. Needs transformers, safetensors
and torch (the GPU hosts' images have them; the project's machines do not, so
this script has not run there).
"""
import json
import os
import random
import sys

import torch
from transformers import GPT2LMHeadModel


def reference_loss(d, rows):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_reference", os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf-reference.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    _, losses = mod.losses_of(mod.read_safetensors(os.path.join(d, "model.safetensors")), cfg, rows)
    return losses.mean().item()


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    d = argv[0]
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    if len(argv) > 1:
        with open(argv[1]) as f:
            rows = json.load(f)
    else:
        rng = random.Random(0)
        T = min(64, cfg["n_positions"])
        rows = [[rng.randrange(cfg["vocab_size"]) for _ in range(T + 1)] for _ in range(2)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.float32).to(device).eval()
    if os.path.exists(os.path.join(d, "vocab.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
        print(f"tokenizer: {type(tok).__name__}, 'Hello world' -> {tok('Hello world')['input_ids']}")
    t = torch.tensor(rows, dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(t[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1)).item()
    want = reference_loss(d, rows)
    rel = abs(loss - want) / abs(want)
    print(f"transformers GPT2LMHeadModel ({device}, float32): loss {loss:.9f}; tools/hf-reference.py (float64): {want:.9f}; relative difference {rel:.2e}")
    return 0 if rel <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
