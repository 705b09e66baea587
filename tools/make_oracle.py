#!/usr/bin/python3
"""Write the end-to-end oracle state files for a tiny GPT-2 and its variants.

Run with Debian's python, which has python3-torch (1.13) from apt; the default
`python3` on PATH may be another interpreter without torch:

    /usr/bin/python3 tools/make_oracle.py --out-dir tests/data

writes tests/data/oracle_tiny.bin (plain GPT-2 with AdamW) and one
tests/data/oracle_<variant>.bin per architecture or optimizer choice (see
VARIANTS below); `--out FILE [--variant NAME]` writes one file.

The model is GPT-2 written here from plain torch ops in float64, independently
of the C++ code, so tests/test_oracle.cpp can check our forward, backward and
first optimizer steps against it. The output is deterministic on one machine
and torch build (fixed seeds, one thread, float64 throughout); elsewhere the
values agree to float64 rounding (~1e-16), not byte for byte (BLAS kernels
differ), so the committed files are the reference and are only regenerated
when the model they describe changes.

Model: V=100 real vocabulary, Vp=128 padded (rows of wte), maxT=8 (rows of wpe),
L=2 layers, NH=2 heads, C=16 channels; batch B=2, T=7 (T < maxT on purpose, so
the unused wpe row must get zero gradient). Parameters in llm.c's order:
wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C)
fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C), then lm_head (Vp,C) when the
head is untied. A variant leaves out what its architecture has not (see
model/layout.h): wpe with rotary positions, the gains without norm_params, the
norm biases with RMSNorm or without biases, the linear biases without biases.

The head is tied (logits = lnf(x) @ wte^T over all Vp columns) unless untied;
the loss is the mean cross-entropy over the first V columns only, so the
padded rows of wte get zero gradient (asserted below). With a soft cap the
first V logits are capped, cap * tanh(z / cap); the padded ones never matter.

Architecture choices (the C++ model's, in its own words in kernels/ops.h):
    rope      q and k heads rotated pairwise (i, i + hs/2) by pos * base^(-2i/hs)
    rmsnorm   x / sqrt(mean(x^2) + 1e-5) * w (no mean, no bias)
    qk_norm   each head's q and k divided by its RMS (eps 1e-5), after rope
    relu2     max(x, 0)^2 in place of GELU
    softcap   first V logits -> cap * tanh(z / cap)

Optimizer: 3 steps on the same batch, written out by hand:
    g *= min(1, grad_clip / ||g||)          (global L2 norm over all gradients)
  AdamW (every tensor with optim adamw; embeddings, head, gains, biases with muon):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    mhat = m / (1-b1^t);  vhat = v / (1-b2^t)
    p -= lr_group (mhat / (sqrt(vhat) + eps) + wd p)   (wd only on the 2-D tensors
                                                     AdamW updates)
    with lr_group = embed_lr for wte and wpe, head_lr for lm_head, lr otherwise
  Muon (the hidden matrices with optim muon: per layer q, k, v blocks of qkvw,
  attprojw, fcw, fcprojw, each matrix alone):
    buf = mu buf + (1-mu) g;  u = nesterov ? mu buf + (1-mu) g : buf
    X = u / (||u||_F + 1e-7), transposed when rows > cols; 5 times:
        A = X X^T;  X = a X + (b A + c A A) X     (a, b, c) = (3.4445, -4.7750, 2.0315)
    p -= muon_lr wd_muon p + muon_lr sqrt(max(1, rows/cols)) X

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
    arch             f64 [9]    (variants only) rope, rope_base, rmsnorm, norm_params,
                                qk_norm, relu2, bias, tied_head, softcap
    optim            f64 [8]    (variants only) muon, embed_lr, head_lr, muon_lr,
                                muon_momentum, muon_nesterov, muon_ns_steps, muon_weight_decay
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
import os
import struct

import torch

MAGIC = b"GPTORACL"
VERSION = 1
DTYPE_F32, DTYPE_I32, DTYPE_F64 = 0, 1, 2

V, VP, MAXT, L, NH, C = 100, 128, 8, 2, 2, 16
B, T = 2, 7
LR, BETA1, BETA2, EPS, WD, GRAD_CLIP, STEPS = 1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0, 3
NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315

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
HEAD = ("lm_head", (VP, C), "weight")
HIDDEN = ["qkvw", "attprojw", "fcw", "fcprojw"]

GPT2 = dict(rope=False, rope_base=10000.0, rmsnorm=False, norm_params=True, qk_norm=False,
            relu2=False, bias=True, tied_head=True, softcap=0.0)
ADAMW = dict(muon=False, embed_lr=0.0, head_lr=0.0, muon_lr=0.05, muon_momentum=0.9,
             muon_nesterov=True, muon_ns_steps=5, muon_weight_decay=0.0)

# Each choice alone, Muon on GPT-2, and everything together with Muon.
VARIANTS = {
    "rope": (dict(rope=True, rope_base=500.0), {}),
    "rmsnorm": (dict(rmsnorm=True), {}),
    "rmsnorm_noparams": (dict(rmsnorm=True, norm_params=False), {}),
    "qknorm": (dict(qk_norm=True), {}),
    "relu2": (dict(relu2=True), {}),
    "nobias": (dict(bias=False), {}),
    "untied": (dict(tied_head=False), dict(embed_lr=0.03, head_lr=0.004)),
    "softcap": (dict(softcap=0.5), {}),
    "muon": ({}, dict(muon=True)),
    "modern": (dict(rope=True, rope_base=500.0, rmsnorm=True, norm_params=False, qk_norm=True, relu2=True,
                    bias=False, tied_head=False, softcap=0.5),
               dict(muon=True, embed_lr=0.03, head_lr=0.004, muon_nesterov=False, muon_weight_decay=0.5)),
}


def param_list(arch):
    """The (name, shape, kind) of the variant's tensors, in layout order."""
    out = []
    for name, shape, kind in PARAMS:
        if name == "wpe" and arch["rope"]:
            continue
        if kind == "ln_weight" and not arch["norm_params"]:
            continue
        if name in ("ln1b", "ln2b", "lnfb") and (arch["rmsnorm"] or not arch["bias"] or not arch["norm_params"]):
            continue
        if name in ("qkvb", "attprojb", "fcb", "fcprojb") and not arch["bias"]:
            continue
        out.append((name, shape, kind))
    if not arch["tied_head"]:
        out.append(HEAD)
    return out


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
    y = (x - mean) / torch.sqrt(var + 1e-5)
    if w is not None:
        y = y * w
    return y + b if b is not None else y


def rmsnorm(x, w):
    y = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-5)
    return y * w if w is not None else y


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def rope(x, base):
    """x (B,NH,T,hs): pair i with i + hs/2, turned by t * base^(-2i/hs)."""
    hs = x.shape[-1]
    i = torch.arange(hs // 2, dtype=torch.float64)
    theta = torch.arange(T, dtype=torch.float64)[:, None] * base ** (-2.0 * i / hs)  # (T, hs/2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def forward(p, inputs, arch):
    """Logits (B,T,VP) for inputs (B,T)."""
    hs = C // NH

    def norm(x, w, b):
        return rmsnorm(x, w) if arch["rmsnorm"] else layernorm(x, w, b)

    def layer(name, l):
        t = p.get(name)
        return None if t is None else t[l]

    def linear(x, w, b):
        return x @ w.T + b if b is not None else x @ w.T

    x = p["wte"][inputs]  # (B,T,C)
    if not arch["rope"]:
        x = x + p["wpe"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(L):
        h = norm(x, layer("ln1w", l), layer("ln1b", l))
        qkv = linear(h, p["qkvw"][l], layer("qkvb", l))  # (B,T,3C)
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        if arch["rope"]:
            q, k = rope(q, arch["rope_base"]), rope(k, arch["rope_base"])
        if arch["qk_norm"]:
            q, k = rmsnorm(q, None), rmsnorm(k, None)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B,NH,T,T)
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p["attprojw"][l], layer("attprojb", l))
        h = norm(x, layer("ln2w", l), layer("ln2b", l))
        f = linear(h, p["fcw"][l], layer("fcb", l))  # (B,T,4C)
        f = torch.relu(f) ** 2 if arch["relu2"] else gelu_tanh(f)
        x = x + linear(f, p["fcprojw"][l], layer("fcprojb", l))
    x = norm(x, p.get("lnfw"), p.get("lnfb"))
    logits = x @ (p["wte"] if arch["tied_head"] else p["lm_head"]).T  # (B,T,VP)
    if arch["softcap"] > 0:
        cap = arch["softcap"]
        logits = torch.cat([cap * torch.tanh(logits[..., :V] / cap), logits[..., V:]], dim=-1)
    return logits


def loss_fn(logits, targets):
    # Only the V real columns take part; the padded ones are never counted.
    logp = torch.log_softmax(logits[..., :V], dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).mean()


def loss_and_grads(p, inputs, targets, arch, names):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in p.items()}
    logits = forward(leaves, inputs, arch)
    loss = loss_fn(logits, targets)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return logits.detach(), loss.detach(), dict(zip(names, grads))


def newton_schulz(G, steps):
    X = G.T if G.shape[0] > G.shape[1] else G
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = NS_A * X + (NS_B * A + NS_C * A @ A) @ X
    return X.T if G.shape[0] > G.shape[1] else X


def hidden_blocks(name):
    """The matrices Muon updates alone, as (layer, row slice) of a stacked tensor."""
    rows = {"qkvw": [(0, C), (C, 2 * C), (2 * C, 3 * C)], "attprojw": [(0, C)], "fcw": [(0, 4 * C)], "fcprojw": [(0, C)]}[name]
    return [(l, a, b) for l in range(L) for a, b in rows]


def optimizer_steps(p, inputs, targets, arch, opt, plist):
    names = [n for n, _, _ in plist]
    p = {n: t.clone() for n, t in p.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    decay = {n: kind == "weight" for n, _, kind in plist}
    muon = {n for n in HIDDEN} if opt["muon"] else set()
    group_lr = {n: LR for n in names}
    for n in ("wte", "wpe"):
        if opt["embed_lr"] > 0 and n in group_lr:
            group_lr[n] = opt["embed_lr"]
    if opt["head_lr"] > 0 and "lm_head" in group_lr:
        group_lr["lm_head"] = opt["head_lr"]
    mu = opt["muon_momentum"]
    losses, norms = [], []
    for t in range(1, STEPS + 1):
        _, loss, g = loss_and_grads(p, inputs, targets, arch, names)
        losses.append(loss.item())
        norm = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
        norms.append(norm)
        scale = min(1.0, GRAD_CLIP / norm)
        for n in names:
            gn = g[n] * scale
            if n in muon:
                m[n] = mu * m[n] + (1 - mu) * gn
                u = mu * m[n] + (1 - mu) * gn if opt["muon_nesterov"] else m[n]
                new = p[n].clone()
                for l, a, b in hidden_blocks(n):
                    X = newton_schulz(u[l, a:b], opt["muon_ns_steps"])
                    rows, cols = X.shape
                    new[l, a:b] = (p[n][l, a:b] - opt["muon_lr"] * opt["muon_weight_decay"] * p[n][l, a:b]
                                   - opt["muon_lr"] * math.sqrt(max(1.0, rows / cols)) * X)
                p[n] = new
                continue
            m[n] = BETA1 * m[n] + (1 - BETA1) * gn
            v[n] = BETA2 * v[n] + (1 - BETA2) * gn * gn
            mhat = m[n] / (1 - BETA1 ** t)
            vhat = v[n] / (1 - BETA2 ** t)
            update = mhat / (torch.sqrt(vhat) + EPS)
            if decay[n]:
                update = update + WD * p[n]
            p[n] = p[n] - group_lr[n] * update
    _, loss, _ = loss_and_grads(p, inputs, targets, arch, names)
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


def build(variant):
    """The records of one oracle file; variant None is plain GPT-2 with AdamW."""
    arch, opt = dict(GPT2), dict(ADAMW)
    if variant is not None:
        arch.update(VARIANTS[variant][0])
        opt.update(VARIANTS[variant][1])
    plist = param_list(arch)
    names = [n for n, _, _ in plist]

    # One thread: the reduction order, hence the bytes, never depends on the machine's cores.
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240611)
    params = init_params(gen)
    inputs, targets = make_tokens(gen)
    if not arch["tied_head"]:
        params["lm_head"] = torch.randn(HEAD[1], generator=gen, dtype=torch.float64) * 0.1
    params = {n: params[n] for n in names}

    logits, loss, grads = loss_and_grads(params, inputs, targets, arch, names)
    # The padded vocabulary rows and the wpe rows past T take no part in the loss.
    head = "wte" if arch["tied_head"] else "lm_head"
    assert torch.all(grads[head][V:] == 0), "padded head rows got gradient"
    if "wpe" in grads:
        assert torch.all(grads["wpe"][T:] == 0), "unused wpe rows got gradient"
    final, step_losses, step_norms = optimizer_steps(params, inputs, targets, arch, opt, plist)
    assert step_losses[0] == loss.item()
    assert step_losses[-1] < step_losses[0], "the optimizer did not lower the loss"

    records = [
        pack_record("config", DTYPE_I32, [8], [V, VP, MAXT, L, NH, C, B, T]),
        pack_record("adamw", DTYPE_F64, [7], [LR, BETA1, BETA2, EPS, WD, GRAD_CLIP, float(STEPS)]),
    ]
    if variant is not None:
        a = arch
        records.append(pack_record("arch", DTYPE_F64, [9], [float(a["rope"]), a["rope_base"], float(a["rmsnorm"]),
                                                            float(a["norm_params"]), float(a["qk_norm"]), float(a["relu2"]),
                                                            float(a["bias"]), float(a["tied_head"]), a["softcap"]]))
        o = opt
        records.append(pack_record("optim", DTYPE_F64, [8], [float(o["muon"]), o["embed_lr"], o["head_lr"], o["muon_lr"],
                                                             o["muon_momentum"], float(o["muon_nesterov"]),
                                                             float(o["muon_ns_steps"]), o["muon_weight_decay"]]))
    records += [
        pack_record("inputs", DTYPE_I32, [B, T], inputs.reshape(-1).tolist()),
        pack_record("targets", DTYPE_I32, [B, T], targets.reshape(-1).tolist()),
    ]
    records += [f64("param." + n, params[n]) for n in names]
    records.append(f64("logits", logits))
    records.append(f64("loss", loss.reshape(1)))
    records += [f64("grad." + n, grads[n]) for n in names]
    records.append(pack_record("step_losses", DTYPE_F64, [STEPS + 1], step_losses))
    records.append(pack_record("step_grad_norms", DTYPE_F64, [STEPS], step_norms))
    records += [f64("final." + n, final[n]) for n in names]
    return records, loss, step_losses, step_norms


def write(path, variant):
    records, loss, step_losses, step_norms = build(variant)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<II", VERSION, len(records)))
        for r in records:
            f.write(r)
    print("%s: loss %.6f, step losses %s, grad norms %s"
          % (path, loss.item(), ["%.6f" % x for x in step_losses], ["%.4f" % x for x in step_norms]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="one output file, e.g. tests/data/oracle_tiny.bin")
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="with --out: the variant to write (default: plain GPT-2)")
    ap.add_argument("--out-dir", help="write oracle_tiny.bin and every oracle_<variant>.bin into this directory")
    args = ap.parse_args()
    if bool(args.out) == bool(args.out_dir):
        ap.error("give --out FILE or --out-dir DIR")
    if args.out:
        write(args.out, args.variant)
        return
    write(os.path.join(args.out_dir, "oracle_tiny.bin"), None)
    for name in VARIANTS:
        write(os.path.join(args.out_dir, "oracle_%s.bin" % name), name)


if __name__ == "__main__":
    main()
