#!/usr/bin/python3
"""Host emulation of the CUDA kernels of the architecture and optimizer choices.

No GPU has run these kernels yet. This script models, in numpy, what each
launch does with its grid, its index arithmetic and its library calls, as
written in kernels/cuda/{muon,rope,layernorm,classifier}.cu, and checks the
model against plain references:

  muon      the three batched cuBLASLt products per Newton-Schulz step with the
            exact (m, n, k, transA, transB, ld, stride, alpha, beta, C) arguments
            of muon.cu, under cuBLASLt's column-major semantics, for wide, tall,
            square and odd stacks; plus the momentum kernel's chunking (grid
            (G, count)) and the scale kernel's partial indexing
  rope      rope_kernel's thread -> (row, head, pair) decomposition: every q/k
            pair rotated exactly once, v untouched, values as kernels/cpu/rope.cpp
  qknorm    the warp -> (row, head) decomposition and offsets
  norms     gnorm_row's lane -> channel ownership (VEC and scalar) covers each
            channel once, for C = 72, 100, 768, 1600
  softcap   classifier_kernel<VEC, CAP>'s loops: the masked columns, and the
            capped gradient against central differences of the capped loss

Run: /usr/bin/python3 tools/emulate_modern_kernels.py  (prints one line per check,
exits 1 on any failure). It is a review aid, not a test of the CUDA code:
only running the CUDA tests (tests/test_kernels_cuda.cpp) on a GPU is.
"""

import math
import sys

import numpy as np

FAILED = []


def check(name, ok, detail=""):
    print("%-60s %s %s" % (name, "ok" if ok else "FAILED", detail))
    if not ok:
        FAILED.append(name)


# ---------------------------------------------------------------- cuBLASLt model

def lt_matmul(m, n, k, ta, tb, A, lda, sa, B, ldb, sb, C, D, ldd, sd, batch, alpha, beta):
    """cublasLtMatmul on flat f64 buffers: D = alpha op(A) op(B) + beta C, column-major, strided batch."""
    for b in range(batch):
        def mat(buf, off, rows, cols, ld):
            # column-major (rows, cols) with leading dimension ld
            idx = off + np.arange(rows)[:, None] + np.arange(cols)[None, :] * ld
            return buf[idx]
        a = mat(A, b * sa, k if ta else m, m if ta else k, lda)
        a = a.T if ta else a
        bb = mat(B, b * sb, n if tb else k, k if tb else n, ldb)
        bb = bb.T if tb else bb
        prod = alpha * (a @ bb)
        if beta != 0:
            prod = prod + beta * mat(C, b * sd, m, n, ldd)
        idx = b * sd + np.arange(m)[:, None] + np.arange(n)[None, :] * ldd
        D[idx] = prod


NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315


def muon_reference(u, rows, cols, steps):
    """kernels/cpu/muon.cpp's orthogonalisation of one row-major matrix u (rows, cols)."""
    X = u.T if rows > cols else u
    X = X / (np.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        Bm = NS_B * A + NS_C * (A @ A)
        X = NS_A * X + Bm @ X
    return X.T if rows > cols else X


def muon_cuda_model(u_stack, count, rows, cols, steps):
    """muon.cu: X holds the stack row-major; the products as muon_update calls batched_gemm."""
    tall = rows > cols
    s = cols if tall else rows
    m, ss = rows * cols, s * s
    X = np.concatenate([u.reshape(-1) / (np.linalg.norm(u) + 1e-7) for u in u_stack])
    Y = np.zeros_like(X)
    A = np.zeros(count * ss)
    Bm = np.zeros(count * ss)
    sm, sq = m, ss
    for _ in range(steps):
        if not tall:
            lt_matmul(s, s, cols, True, False, X, cols, sm, X, cols, sm, None, A, s, sq, count, 1.0, 0.0)
        else:
            lt_matmul(s, s, rows, False, True, X, cols, sm, X, cols, sm, None, A, s, sq, count, 1.0, 0.0)
        lt_matmul(s, s, s, False, False, A, s, sq, A, s, sq, A, Bm, s, sq, count, NS_C, NS_B)
        if not tall:
            lt_matmul(cols, rows, rows, False, True, X, cols, sm, Bm, s, sq, X, Y, cols, sm, count, 1.0, NS_A)
        else:
            lt_matmul(cols, rows, cols, True, False, Bm, s, sq, X, cols, sm, X, Y, cols, sm, count, 1.0, NS_A)
        X, Y = Y, X
    return [X[k * m:(k + 1) * m].reshape(rows, cols) for k in range(count)]


def emulate_muon():
    rng = np.random.default_rng(1)
    for count, rows, cols in [(3, 8, 8), (2, 6, 15), (2, 15, 6), (1, 7, 11), (4, 32, 8)]:
        us = [rng.standard_normal((rows, cols)) for _ in range(count)]
        got = muon_cuda_model(us, count, rows, cols, 5)
        err = max(np.abs(g - muon_reference(u, rows, cols, 5)).max() for g, u in zip(got, us))
        check("muon NS products %dx(%d,%d)" % (count, rows, cols), err < 1e-12, "max abs err %.1e" % err)
    # The momentum kernel's grid (G, count): block (g, k) covers [g*chunk, min(m, g*chunk+chunk)).
    for m in [1, 7, 16, 17, 590000]:
        G = 16
        chunk = (m + G - 1) // G
        covered = np.zeros(m, dtype=int)
        for g in range(G):
            lo, hi = g * chunk, min(m, g * chunk + chunk)
            if lo < hi:
                covered[lo:hi] += 1
        check("muon momentum chunks cover m=%d once" % m, bool((covered == 1).all()))


# ---------------------------------------------------------------- rope

def emulate_rope():
    rng = np.random.default_rng(2)
    for N, T, pos0, NH, hs in [(10, 5, 0, 2, 6), (3, 1, 40, 3, 8), (7, 7, 0, 1, 128)]:
        C, half = NH * hs, hs // 2
        base = 500.0
        qkv = rng.standard_normal(N * 3 * C)
        ref = qkv.copy().reshape(N, 3 * C)
        for r in range(N):
            pos = pos0 + r % T
            for j in range(2 * NH):
                for i in range(half):
                    th = pos * base ** (-2.0 * i / hs)
                    x1, x2 = ref[r, j * hs + i], ref[r, j * hs + i + half]
                    ref[r, j * hs + i] = x1 * math.cos(th) - x2 * math.sin(th)
                    ref[r, j * hs + i + half] = x1 * math.sin(th) + x2 * math.cos(th)
        # rope_kernel: one thread per idx < N * 2NH * half
        cs = np.array([[(math.cos(p * base ** (-2.0 * i / hs)), math.sin(p * base ** (-2.0 * i / hs))) for i in range(half)]
                       for p in range(pos0 + min(T, N))])
        x = qkv.copy()
        touched = np.zeros_like(x, dtype=int)
        per_row = 2 * NH * half
        for idx in range(N * per_row):
            r = idx // per_row
            j, i = idx % per_row // half, idx % half
            pos = pos0 + r % T
            c, s = cs[pos, i]
            o = r * 3 * C + j * 2 * half
            x1, x2 = x[o + i], x[o + i + half]
            x[o + i], x[o + i + half] = x1 * c - x2 * s, x1 * s + x2 * c
            touched[o + i] += 1
            touched[o + i + half] += 1
        t = touched.reshape(N, 3 * C)
        ok = (t[:, :2 * C] == 1).all() and (t[:, 2 * C:] == 0).all()
        err = np.abs(x.reshape(N, 3 * C) - ref).max()
        check("rope N=%d T=%d pos0=%d NH=%d hs=%d" % (N, T, pos0, NH, hs), ok and err < 1e-12, "max abs err %.1e" % err)


# ---------------------------------------------------------------- qknorm

def emulate_qknorm():
    for N, NH, hs in [(5, 3, 6), (2, 12, 64)]:
        C = NH * hs
        touched = np.zeros(N * 3 * C, dtype=int)
        for wid in range(N * 2 * NH):  # one warp per (row, head)
            row, j = wid // (2 * NH), wid % (2 * NH)
            off = row * 3 * C + j * hs
            for lane in range(32):
                for i in range(lane, hs, 32):
                    touched[off + i] += 1
        t = touched.reshape(N, 3 * C)
        check("qknorm warps N=%d NH=%d hs=%d cover q, k once" % (N, NH, hs), bool((t[:, :2 * C] == 1).all() and (t[:, 2 * C:] == 0).all()))


# ---------------------------------------------------------------- norms

def emulate_norm_lanes():
    for C in [72, 100, 768, 1600]:
        for vec in [True, False]:
            if vec and C % 8:
                continue
            W = 8 if vec else 1
            owned = np.zeros(C, dtype=int)
            for lane in range(32):
                for c in range(lane * W, C, 32 * W):
                    owned[c:c + W] += 1
            check("gnorm_row lanes C=%d %s" % (C, "VEC" if vec else "scalar"), bool((owned == 1).all()))


# ---------------------------------------------------------------- classifier softcap

def emulate_softcap():
    rng = np.random.default_rng(3)
    V, Vp, cap, dloss, threads = 197, 200, 15.0, 0.25, 32
    row = rng.uniform(-40, 40, Vp)
    target = 11

    def loss(x):
        z = cap * np.tanh(x[:V] / cap)
        return dloss * (np.log(np.exp(z - z.max()).sum()) + z.max() - z[target])

    # classifier_kernel<VEC=true, CAP=true>: thread t takes j = 8t + 8*threads*k, masked at V.
    seen = np.zeros(Vp, dtype=int)
    for t in range(threads):
        for j in range(t * 8, V, threads * 8):
            for k in range(8):
                if j + k < V:
                    seen[j + k] += 1
    check("classifier VEC loop reads each real column once", bool((seen[:V] == 1).all() and (seen[V:] == 0).all()))
    z = cap * np.tanh(row[:V] / cap)
    lse = np.log(np.exp(z - z.max()).sum()) + z.max()
    grad = np.zeros(Vp)
    for c in range(Vp):
        if c < V:
            zc = cap * np.tanh(row[c] / cap)
            grad[c] = (math.exp(zc - lse) - (1.0 if c == target else 0.0)) * dloss * (1 - (zc / cap) ** 2)
    fd = np.zeros(Vp)
    for c in range(Vp):
        e = np.zeros(Vp)
        e[c] = 1e-6
        fd[c] = (loss(row + e) - loss(row - e)) / 2e-6
    err = np.abs(grad - fd).max() / np.abs(fd).max()
    check("classifier softcap gradient vs central differences", err < 1e-6, "rel err %.1e" % err)


def main():
    emulate_muon()
    emulate_rope()
    emulate_qknorm()
    emulate_norm_lanes()
    emulate_softcap()
    if FAILED:
        print("%d check(s) FAILED" % len(FAILED))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
