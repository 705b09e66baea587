#!/usr/bin/python3
"""Write the end-to-end oracle state file for a tiny GPT-2 (tests/data/oracle_tiny.bin).

Run with Debian's python, which has python3-torch (1.13) from apt; the default
`python3` on PATH may be another interpreter without torch:

    /usr/bin/python3 tools/make_oracle.py --out tests/data/oracle_tiny.bin

The model is GPT-2 written here from plain torch ops in float64, independently
of the C++ code, so tests/test_oracle.cpp can check our forward, backward and
first AdamW steps against it. The output is deterministic: the same bytes on
every run (fixed seeds, one thread, float64 throughout).

Model: V=100 real vocabulary, Vp=128 padded (rows of wte), maxT=8 (rows of wpe),
L=2 layers, NH=2 heads, C=16 channels; batch B=2, T=7 (T < maxT on purpose, so
the unused wpe row must get zero gradient). Parameters in llm.c's order:
wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C)
fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C).

The head is tied (logits = lnf(x) @ wte^T over all Vp columns); the loss is the
mean cross-entropy over the first V columns only, so the padded rows of wte get
zero gradient (asserted below).

Optimizer: 3 AdamW steps on the same batch, written out by hand:
    g *= min(1, grad_clip / ||g||)          (global L2 norm over all gradients)
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    mhat = m / (1-b1^t);  vhat = v / (1-b2^t)
    p -= lr (mhat / (sqrt(vhat) + eps) + wd p)     (wd only on the 2-D weights
                                                   wte wpe qkvw attprojw fcw fcprojw)
which is what torch.optim.AdamW computes.

File format (little-endian):
    magic    8 bytes  "GPTORACL"
    version  uint32   1
    count    uint32   number of records
    then `count` records, each:
        name_len uint32, name (utf-8, name_len bytes)
        dtype    uint32   0 = float32, 1 = int32, 2 = float64
        ndim     uint32
        dims     int64[ndim]
        data     prod(dims) values of dtype, row-major
Records written (all floating values as float64):
    config           int32 [8]  V, Vp, maxT, L, NH, C, B, T
    adamw            f64 [7]    lr, beta1, beta2, eps, weight_decay, grad_clip, steps
    inputs, targets  int32 (B,T) tokens in [0,V)
    param.<name>     initial parameters, for each name above
    logits           (B,T,Vp) from the initial parameters
    loss             [1]
    grad.<name>      d loss / d param at the initial parameters
    step_losses      [steps+1]  loss before each step, then after the last
    step_grad_norms  [steps]    global gradient norm before clipping, per step
    final.<name>     parameters after the last step
"""

import argparse
import math
import struct

import torch

MAGIC = b"GPTORACL"
VERSION = 1
DTYPE_F32, DTYPE_I32, DTYPE_F64 = 0, 1, 2

V, VP, MAXT, L, NH, C = 100, 128, 8, 2, 2, 16
B, T = 2, 7
LR, BETA1, BETA2, EPS, WD, GRAD_CLIP, STEPS = 1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0, 3

# (name, shape, kind): kind picks the init and whether weight decay applies.
PARAMS = [
    ("wte", (VP, C), "weight"),
    ("wpe", (MAXT, C), "weight"),
    ("ln1w", (L, C), "ln_weight"),
    ("ln1b", (L, C), "bias"),
    ("qkvw", (L, 3 * C, C), "weight"),
    ("qkvb", (L, 3 * C), "bias"),
    ("attprojw", (L, C, C), "weight"),
    ("attprojb", (L, C), "bias"),
    ("ln2w", (L, C), "ln_weight"),
    ("ln2b", (L, C), "bias"),
    ("fcw", (L, 4 * C, C), "weight"),
    ("fcb", (L, 4 * C), "bias"),
    ("fcprojw", (L, C, 4 * C), "weight"),
    ("fcprojb", (L, C), "bias"),
    ("lnfw", (C,), "ln_weight"),
    ("lnfb", (C,), "bias"),
]


def init_params(gen):
    # Larger than GPT-2's 0.02 so that activations and gradients are far from
    # zero and a wrong formula cannot hide under the tolerance.
    params = {}
    for name, shape, kind in PARAMS:
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1
        params[name] = x + 1.0 if kind == "ln_weight" else x
    return params


def make_tokens(gen):
    inputs = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)
    # Repeated tokens: the embedding backward must accumulate, not overwrite.
    inputs[0, 4] = inputs[0, 1]
    inputs[1, 2] = inputs[0, 1]
    inputs[1, 6] = inputs[1, 0]
    targets[1, 3] = targets[0, 5]
    targets[0, 2] = inputs[0, 3]
    return inputs, targets


def layernorm(x, w, b):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as in GPT-2
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(p, inputs):
    """Logits (B,T,VP) for inputs (B,T)."""
    hs = C // NH
    x = p["wte"][inputs] + p["wpe"][:T]  # (B,T,C)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(L):
        h = layernorm(x, p["ln1w"][l], p["ln1b"][l])
        qkv = h @ p["qkvw"][l].T + p["qkvb"][l]  # (B,T,3C)
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B,NH,T,T)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p["attprojw"][l].T + p["attprojb"][l]
        h = layernorm(x, p["ln2w"][l], p["ln2b"][l])
        f = gelu_tanh(h @ p["fcw"][l].T + p["fcb"][l])  # (B,T,4C)
        x = x + f @ p["fcprojw"][l].T + p["fcprojb"][l]
    x = layernorm(x, p["lnfw"], p["lnfb"])
    return x @ p["wte"].T  # (B,T,VP)


def loss_fn(logits, targets):
    # Only the V real columns take part; the padded ones are never counted.
    logp = torch.log_softmax(logits[..., :V], dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).mean()


def loss_and_grads(p, inputs, targets):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in p.items()}
    logits = forward(leaves, inputs)
    loss = loss_fn(logits, targets)
    names = [n for n, _, _ in PARAMS]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return logits.detach(), loss.detach(), dict(zip(names, grads))


def adamw_steps(p, inputs, targets):
    p = {n: t.clone() for n, t in p.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    decay = {n: kind == "weight" for n, _, kind in PARAMS}
    losses, norms = [], []
    for t in range(1, STEPS + 1):
        _, loss, g = loss_and_grads(p, inputs, targets)
        losses.append(loss.item())
        norm = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
        norms.append(norm)
        scale = min(1.0, GRAD_CLIP / norm)
        for n in p:
            gn = g[n] * scale
            m[n] = BETA1 * m[n] + (1 - BETA1) * gn
            v[n] = BETA2 * v[n] + (1 - BETA2) * gn * gn
            mhat = m[n] / (1 - BETA1 ** t)
            vhat = v[n] / (1 - BETA2 ** t)
            update = mhat / (torch.sqrt(vhat) + EPS)
            if decay[n]:
                update = update + WD * p[n]
            p[n] = p[n] - LR * update
    _, loss, _ = loss_and_grads(p, inputs, targets)
    losses.append(loss.item())
    return p, losses, norms


def pack_record(name, dtype, shape, values):
    """One record; values is a flat list of Python numbers."""
    raw = name.encode("utf-8")
    out = struct.pack("<I", len(raw)) + raw + struct.pack("<II", dtype, len(shape))
    out += struct.pack("<%dq" % len(shape), *shape)
    fmt = {DTYPE_F32: "f", DTYPE_I32: "i", DTYPE_F64: "d"}[dtype]
    assert len(values) == math.prod(shape), name
    return out + struct.pack("<%d%s" % (len(values), fmt), *values)


def f64(name, tensor):
    return pack_record(name, DTYPE_F64, list(tensor.shape), tensor.reshape(-1).tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output file, e.g. tests/data/oracle_tiny.bin")
    args = ap.parse_args()

    # One thread: the reduction order, hence the bytes, never depends on the machine's cores.
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240611)
    params = init_params(gen)
    inputs, targets = make_tokens(gen)

    logits, loss, grads = loss_and_grads(params, inputs, targets)
    # The padded wte rows and the wpe rows past T take no part in the loss.
    assert torch.all(grads["wte"][V:] == 0), "padded wte rows got gradient"
    assert torch.all(grads["wpe"][T:] == 0), "unused wpe rows got gradient"
    final, step_losses, step_norms = adamw_steps(params, inputs, targets)
    assert step_losses[0] == loss.item()
    assert step_losses[-1] < step_losses[0], "AdamW did not lower the loss"

    records = [
        pack_record("config", DTYPE_I32, [8], [V, VP, MAXT, L, NH, C, B, T]),
        pack_record("adamw", DTYPE_F64, [7], [LR, BETA1, BETA2, EPS, WD, GRAD_CLIP, float(STEPS)]),
        pack_record("inputs", DTYPE_I32, [B, T], inputs.reshape(-1).tolist()),
        pack_record("targets", DTYPE_I32, [B, T], targets.reshape(-1).tolist()),
    ]
    records += [f64("param." + n, params[n]) for n, _, _ in PARAMS]
    records.append(f64("logits", logits))
    records.append(f64("loss", loss.reshape(1)))
    records += [f64("grad." + n, grads[n]) for n, _, _ in PARAMS]
    records.append(pack_record("step_losses", DTYPE_F64, [STEPS + 1], step_losses))
    records.append(pack_record("step_grad_norms", DTYPE_F64, [STEPS], step_norms))
    records += [f64("final." + n, final[n]) for n, _, _ in PARAMS]

    with open(args.out, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(records)))
        for r in records:
            f.write(r)
    print("%s: loss %.6f, step losses %s, grad norms %s"
          % (args.out, loss.item(), ["%.6f" % x for x in step_losses], ["%.4f" % x for x in step_norms]))


if __name__ == "__main__":
    main()
