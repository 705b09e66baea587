#!/usr/bin/env python3
"""GPT-2 124M in plain PyTorch: the reference `gpt`'s GPU figures are compared
against, run by tools/gpu-check.sh on the same machine in the same call.

What it is (the usual fast PyTorch recipe, as a performance engineer would set
it up): float32 parameters, bf16 autocast, torch.compile of the whole model,
F.scaled_dot_product_attention (causal: FlashAttention on Hopper), fused AdamW,
TF32 allowed for the float32 products, the vocabulary padded to 50304 with the
padded logits left out of the loss (as `gpt` does). The model and the recipe
match `gpt train` with configs/gpt2-124m.yaml's shape: GPT-2 initialisation
(N(0, 0.02), residual projections 0.02/sqrt(2L), biases 0, LayerNorm 1), tied
head, tanh GELU, AdamW (0.9, 0.95, eps 1e-8) with weight decay on the
matrices and embeddings only, global-norm clipping, llm.c's warm-up (step 0
trains at lr/warmup) then cosine to final_lr_frac, the same FLOP count per
token (6N + 12LCT) for MFU.

Two measurements, each its own phase:
  bench  ms/step of full training steps on uniform random tokens (B, T):
         warm-up steps (the compile happens there), then the median of
         --repeats steps, each timed from its start to its loss on the host.
  ttt    time to a target val loss on llm.c shards: the same batches as `gpt`
         (each step takes B rows of T+1 consecutive tokens from the stream,
         the stream wrapping to its start), evaluation of --val-batches
         batches from the start of the val stream every --val-every steps
         (also before step 1) off the clock, time to target interpolated
         linearly between the two evaluations around the crossing, as
         `gpt train` does. Evaluation runs the model uncompiled (no second
         compile; the numbers agree to bf16 rounding).

With --sync-dir, each phase waits, after its untimed preparation (model,
compile, warm-up), for the file <dir>/go.<phase> before it measures, and
writes <dir>/done.<phase> after: gpu-check starts this script first, builds
and tests while it compiles, and lets it measure only when the GPU is
otherwise idle.

Output: one JSON object per phase on stdout, prefixed "REFERENCE_RESULT ".
--dry-run runs both phases on the CPU with a tiny model, no compile, in
float32, to check the script's logic (data order, schedule, interpolation,
output) where there is no GPU.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SHARD_MAGIC = 20240520
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0}


# ---------------------------------------------------------------------------
# Model


def causal_attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch < 2.0 (Debian's 1.13, used by --dry-run on a CPU): the same function, written out.
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return att.softmax(dim=-1) @ v


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.attproj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.fcproj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v)
        x = x + self.attproj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, NH, C, maxT, V, Vp):
        super().__init__()
        self.V = V
        self.wte = nn.Embedding(Vp, C)
        self.wpe = nn.Embedding(maxT, C)
        self.blocks = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = nn.LayerNorm(C)
        self.L = L

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        resid = 0.02 / math.sqrt(2 * self.L)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "lnf.weight":
                    p.fill_(1.0)
                elif p.dim() == 1:
                    p.zero_()
                else:
                    std = resid if name.endswith("attproj.weight") or name.endswith("fcproj.weight") else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied head, (B, T, Vp)
        # The padded vocabulary never enters the loss.
        return F.cross_entropy(logits[..., : self.V].float().reshape(-1, self.V), targets.reshape(-1))


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model, L, C, T):
    return 6.0 * param_count(model) + 12.0 * L * C * T  # as gpt's model/layout.cpp


def make_optimizer(model, args, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    if device.type == "cuda":
        kw["fused"] = True
    return torch.optim.AdamW(groups, **kw)


def learning_rate(step, args):
    """gpt's train/schedule.cpp, cosine: llm.c's warm-up, then cosine to final_lr_frac."""
    peak, floor = args.lr, args.lr * args.final_lr_frac
    if step < args.warmup:
        return peak * (step + 1) / args.warmup
    if step >= args.schedule_steps:
        return floor
    frac = (step - args.warmup) / max(1, args.schedule_steps - args.warmup)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * frac))


# ---------------------------------------------------------------------------
# Data: llm.c shards, the batches gpt's data/source.cpp takes.


def read_shard(path):
    import numpy as np

    header = np.fromfile(path, dtype=np.int32, count=256)
    if header.size < 256 or header[0] != SHARD_MAGIC:
        raise SystemExit(f"torch_gpt2.py: {path}: not an llm.c token shard (magic {header[0] if header.size else 'missing'})")
    n = int(header[2])
    tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4, count=n)
    if tokens.size != n:
        raise SystemExit(f"torch_gpt2.py: {path}: header says {n} tokens, file holds {tokens.size}")
    return tokens


class Stream:
    """One shard's tokens as gpt streams them: batch = B rows of T+1 consecutive
    tokens from the current offset, the offset advancing by B*T, back to 0 when
    the next batch would not fit."""

    def __init__(self, tokens, B, T):
        self.tokens, self.B, self.T, self.offset = tokens, B, T, 0
        if tokens.size < B * T + 1:
            raise SystemExit(f"torch_gpt2.py: a shard of {tokens.size} tokens is smaller than one batch ({B} x {T} + 1)")

    def reset(self):
        self.offset = 0

    def next_batch(self):
        import numpy as np

        n = self.B * self.T
        if self.offset + n + 1 > self.tokens.size:
            self.offset = 0
        chunk = self.tokens[self.offset : self.offset + n + 1].astype(np.int64)
        self.offset += n
        x = torch.from_numpy(chunk[:-1].reshape(self.B, self.T))
        y = torch.from_numpy(chunk[1:].reshape(self.B, self.T))
        return x, y


# ---------------------------------------------------------------------------
# Phases


def wait_for(sync_dir, phase, timeout_s):
    if not sync_dir:
        return
    open(os.path.join(sync_dir, f"ready.{phase}"), "w").close()
    go = os.path.join(sync_dir, f"go.{phase}")
    t0 = time.time()
    while not os.path.exists(go):
        if time.time() - t0 > timeout_s:
            raise SystemExit(f"torch_gpt2.py: no {go} after {timeout_s:.0f} s; giving up")
        time.sleep(0.1)


def report(sync_dir, phase, result):
    line = json.dumps(result, sort_keys=True)
    print("REFERENCE_RESULT " + line, flush=True)
    if sync_dir:
        with open(os.path.join(sync_dir, f"done.{phase}.tmp"), "w") as f:
            f.write(line + "\n")
        os.replace(os.path.join(sync_dir, f"done.{phase}.tmp"), os.path.join(sync_dir, f"done.{phase}"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, opt, x, y, args, device, lr=None):
    """One optimizer step; returns (loss, grad norm) as host floats (this waits for the device)."""
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.type, dtype=args.amp_dtype, enabled=args.amp_dtype is not None):
        loss = model(x, y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip) if args.grad_clip > 0 else torch.zeros(())
    opt.step()
    return loss.item(), float(norm)


def bench_phase(model, fwd, args, device, info):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    opt = make_optimizer(model, args, device)
    t0 = time.time()
    for _ in range(args.warmup_steps):  # the compile happens in the first
        train_step(fwd, opt, x, y, args, device)
    sync(device)
    info["warmup_s"] = time.time() - t0
    wait_for(args.sync_dir, "bench", args.sync_timeout)
    ms = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        train_step(fwd, opt, x, y, args, device)
        ms.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(ms)
    tok_s = args.batch * args.seq / (med / 1e3)
    tflops = tok_s * flops_per_token(model, args.layers, args.embd, args.seq) / 1e12
    res = dict(info, phase="bench", B=args.batch, T=args.seq, repeats=args.repeats, median_ms=med, min_ms=min(ms), max_ms=max(ms),
               tokens_per_s=tok_s, tflops=tflops, mfu=tflops / args.peak_tflops if args.peak_tflops > 0 else None)
    report(args.sync_dir, "bench", res)


def evaluate(model, val, args, device):
    val.reset()
    total = 0.0
    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=args.amp_dtype, enabled=args.amp_dtype is not None):
        for _ in range(args.val_batches):
            x, y = val.next_batch()
            total += model(x.to(device), y.to(device)).item()
    model.train()
    return total / args.val_batches


def ttt_phase(model, fwd, args, device, info):
    train = Stream(read_shard(args.train), args.batch, args.seq)
    val = Stream(read_shard(args.val), args.batch, args.seq)
    model.init_weights(args.seed)  # fresh weights; the compiled graph stays valid (same parameters, same shapes)
    opt = make_optimizer(model, args, device)
    wait_for(args.sync_dir, "ttt", args.sync_timeout)
    train_time, evals, crossing, step = 0.0, [], None, 0
    last = None  # (train_time, val_loss) of the previous evaluation
    losses = []
    while True:
        if step % args.val_every == 0 or step == args.max_steps:
            v = evaluate(model, val, args, device)
            evals.append([step, round(train_time, 4), v])
            if crossing is None and v <= args.target:
                if last is None or last[1] <= args.target:
                    crossing = train_time
                else:
                    crossing = last[0] + (last[1] - args.target) / (last[1] - v) * (train_time - last[0])
            last = (train_time, v)
            if crossing is not None or step == args.max_steps:
                break
        t = time.perf_counter()
        x, y = train.next_batch()
        loss, norm = train_step(fwd, opt, x.to(device, non_blocking=True), y.to(device, non_blocking=True), args, device,
                                lr=learning_rate(step, args))
        train_time += time.perf_counter() - t
        if not math.isfinite(loss):
            raise SystemExit(f"torch_gpt2.py: loss {loss} at step {step + 1}")
        losses.append(loss)
        step += 1
    res = dict(info, phase="ttt", target=args.target, time_to_target_s=crossing, steps=step, train_time_s=train_time,
               tokens_per_s=step * args.batch * args.seq / train_time if train_time > 0 else None, evals=evals,
               first_losses=losses[:3], last_loss=losses[-1] if losses else None)
    report(args.sync_dir, "ttt", res)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Phases and options: see the module docstring (python3 torch_gpt2.py --help shows this).")
    ap.add_argument("--phases", default="bench,ttt", help="comma-separated: bench, ttt")
    ap.add_argument("--batch", "-B", type=int, default=64)
    ap.add_argument("--seq", "-T", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--padded-vocab", type=int, default=50304)
    ap.add_argument("--max-seq", type=int, default=1024)
    ap.add_argument("--warmup-steps", type=int, default=5, help="bench: untimed steps first (the compile runs in the first)")
    ap.add_argument("--repeats", type=int, default=10, help="bench: timed steps; the median is reported")
    ap.add_argument("--train", help="ttt: train shard (llm.c .bin)")
    ap.add_argument("--val", help="ttt: val shard")
    ap.add_argument("--target", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--val-batches", type=int, default=10)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=50, help="learning-rate warm-up steps")
    ap.add_argument("--schedule-steps", type=int, default=400, help="cosine horizon")
    ap.add_argument("--final-lr-frac", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="0 = the datasheet dense bf16 peak of the GPU by name")
    ap.add_argument("--sync-dir", help="wait for <dir>/go.<phase> before measuring; write <dir>/done.<phase> after")
    ap.add_argument("--sync-timeout", type=float, default=900)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, no compile, float32: checks the logic")
    args = ap.parse_args()

    if args.dry_run:
        device = torch.device("cpu")
        args.layers, args.heads, args.embd, args.max_seq = 2, 2, 32, 64
        args.padded_vocab = (args.vocab + 127) // 128 * 128
        args.no_compile = True
        args.amp_dtype = None
    else:
        if not torch.cuda.is_available():
            raise SystemExit("torch_gpt2.py: no CUDA device (use --dry-run to check the script on a CPU)")
        device = torch.device("cuda")
        args.amp_dtype = torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    phases = [p for p in args.phases.split(",") if p]
    for p in phases:
        if p not in ("bench", "ttt"):
            raise SystemExit(f"torch_gpt2.py: unknown phase '{p}' (bench, ttt)")
    if "ttt" in phases and not (args.train and args.val):
        raise SystemExit("torch_gpt2.py: the ttt phase needs --train and --val shards")
    if args.seq > args.max_seq:
        raise SystemExit(f"torch_gpt2.py: --seq {args.seq} exceeds the model's context {args.max_seq}")

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    if args.peak_tflops <= 0 and device.type == "cuda":
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), 0.0)
    torch.manual_seed(args.seed)
    model = GPT(args.layers, args.heads, args.embd, args.max_seq, args.vocab, args.padded_vocab).to(device)
    model.init_weights(args.seed)
    t0 = time.time()
    fwd = model if args.no_compile else torch.compile(model)
    info = dict(torch=torch.__version__, device=name, compiled=not args.no_compile, params=param_count(model),
                amp="bf16" if args.amp_dtype is not None else "off", sdpa=hasattr(F, "scaled_dot_product_attention"),
                fused_adamw=device.type == "cuda", peak_tflops=args.peak_tflops, setup_s=time.time() - t0)
    if "bench" in phases:
        bench_phase(model, fwd, args, device, dict(info))
    if "ttt" in phases:
        ttt_phase(model, fwd, args, device, dict(info))


if __name__ == "__main__":
    main()
