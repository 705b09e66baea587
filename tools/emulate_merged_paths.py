#!/usr/bin/python3
"""Host emulation of the CUDA paths the merge of issues 13 and 14 joined.

No GPU has run these kernels yet. This models, thread by thread in plain Python,
what each launch does with its grid, lane -> channel maps, shared-memory
partials and reductions, as written in kernels/cuda, and checks it against the
plain formulas:

  norms     layernorm.cu gnorm_fwd/gnorm_bwd (+ gnorm_bwd_reduce_kernel) for
            LayerNorm and RMSNorm, with and without parameters, VEC and scalar
            lanes, and the folded bias gradient dres_bias taken by matmul.cu's
            column sum (column_sum_into: one chunk and several)
  softcap   classifier_kernel<VEC, CAP>: the capped online max/sum per thread,
            the masked padded columns, every column written once
  relu2     bias_relu2_kernel's grid-stride bias indexing and drelu2_kernel
            against central differences
  adamw     adamw_hyper_kernel + adamw_kernel (range lookup by binary search over
            first blocks, lr * lr_scale per range, the clip scale, the skip on a
            non-finite norm or guard) against kernels/cpu/adamw.cpp<float>, in f32
            without FMA contraction: bit-identical, gaps untouched

Run: /usr/bin/python3 tools/emulate_merged_paths.py (exits 1 on any mismatch).
A review aid, not a test of the CUDA code: only the CUDA tests on a GPU are.
"""
import sys

import math, random
random.seed(1)
EPS = 1e-5

def gnorm_fwd(x, w, b, N, C, rms, VEC):
    W = 8 if VEC else 1; STEP = 32 * W
    out = [[None]*C for _ in range(N)]; mean=[None]*N; rstd=[None]*N
    for row in range(N):
        # lanes: each lane's partial sum, then warp_sum
        m = 0.0
        if not rms:
            s = 0.0
            for lane in range(32):
                c = lane*W
                while c < C:
                    for k in range(W): s += x[row][c+k]
                    c += STEP
            m = s / C
        v = 0.0
        for lane in range(32):
            c = lane*W
            while c < C:
                for k in range(W): v += (x[row][c+k]-m)**2
                c += STEP
        r = 1/math.sqrt(v/C + EPS)
        for lane in range(32):
            c = lane*W
            while c < C:
                for k in range(W):
                    fw = w[c+k] if w else 1.0; fb = b[c+k] if b else 0.0
                    assert out[row][c+k] is None
                    out[row][c+k] = (x[row][c+k]-m)*r*fw + fb
                c += STEP
        mean[row]=m; rstd[row]=r
    assert all(o is not None for rr in out for o in rr)
    return out, mean, rstd

def gnorm_bwd(dinp, dout, x, w, mean, rstd, N, C, rms, VEC, want_w, want_b, warps, G):
    W = 8 if VEC else 1; STEP = 32*W
    partial = [[0.0]*(2*C) for _ in range(G)] if (want_w or want_b) else None
    for blk in range(G):
        acc = [[0.0]*(2*C) for _ in range(warps)]
        for warp in range(warps):
            row = blk*warps + warp
            while row < N:
                m = 0.0 if rms else mean[row]; r = rstd[row]
                gs = gns = 0.0
                for lane in range(32):
                    c = lane*W
                    while c < C:
                        for k in range(W):
                            g = dout[row][c+k]*(w[c+k] if w else 1.0)
                            gs += g; gns += g*((x[row][c+k]-m)*r)
                        c += STEP
                g_mean = 0.0 if rms else gs/C; gn_mean = gns/C
                for lane in range(32):
                    c = lane*W
                    while c < C:
                        for k in range(W):
                            norm = (x[row][c+k]-m)*r
                            g = dout[row][c+k]*(w[c+k] if w else 1.0)
                            dinp[row][c+k] += (g - g_mean - norm*gn_mean)*r
                            if want_w: acc[warp][c+k] += dout[row][c+k]*norm
                            if want_b: acc[warp][C+c+k] += dout[row][c+k]
                        c += STEP
                row += G*warps
        if partial is not None:
            for c in range(2*C): partial[blk][c] = sum(acc[k][c] for k in range(warps))
    return partial

def gnorm_reduce(dweight, dbias, partial, G, C):
    kReduceCols, kReduceRows = 32, 8  # block (32, 8) as in the launcher's rblock
    blocks = (2*C + kReduceCols - 1)//kReduceCols
    for bx in range(blocks):
        part = [[0.0]*kReduceCols for _ in range(kReduceRows)]
        for ty in range(kReduceRows):
            for tx in range(kReduceCols):
                col = bx*kReduceCols + tx; s = 0.0
                if col < 2*C:
                    g = ty
                    while g < G: s += partial[g][col]; g += kReduceRows
                part[ty][tx] = s
        for tx in range(kReduceCols):
            col = bx*kReduceCols + tx
            if col >= 2*C: continue
            total = sum(part[y][tx] for y in range(kReduceRows))
            dst = dweight if col < C else dbias
            if dst is None: continue
            dst[col if col < C else col-C] += total

def column_sum_into(dst, src, N, C):  # matmul.cu bias_grad: block (32, 8), kBiasRows 512
    kBiasLanes, kBiasRows = 8, 512
    chunks = (N + kBiasRows - 1)//kBiasRows
    partial = [[0.0]*C for _ in range(chunks)]
    for gx in range((C+31)//32):
        for gy in range(chunks):
            sums = [[0.0]*32 for _ in range(kBiasLanes)]
            for ty in range(kBiasLanes):
                for tx in range(32):
                    col = gx*32+tx; r0 = gy*kBiasRows; r1 = min(N, r0+kBiasRows); acc = 0.0
                    if col < C:
                        r = r0+ty
                        while r < r1: acc += src[r][col]; r += kBiasLanes
                    sums[ty][tx] = acc
            for tx in range(32):
                col = gx*32+tx
                if col >= C: continue
                s = sum(sums[l][tx] for l in range(kBiasLanes))
                if chunks == 1: dst[col] += s
                else: partial[gy][col] = s
    if chunks > 1:
        for col in range(C): dst[col] += sum(partial[k][col] for k in range(chunks))

def ref_norm(x, w, b, rms):
    C = len(x)
    m = 0.0 if rms else sum(x)/C
    r = 1/math.sqrt(sum((v-m)**2 for v in x)/C + EPS)
    return [(x[c]-m)*r*(w[c] if w else 1)+(b[c] if b else 0) for c in range(C)], m, r

def ref_bwd(x, d, w, rms):
    C = len(x); _, m, r = ref_norm(x, None, None, rms)
    g = [d[c]*(w[c] if w else 1) for c in range(C)]
    n = [(x[c]-m)*r for c in range(C)]
    gm = 0.0 if rms else sum(g)/C; gnm = sum(g[c]*n[c] for c in range(C))/C
    return [(g[c]-gm-n[c]*gnm)*r for c in range(C)], [d[c]*n[c] for c in range(C)]

def close(a, b, tol=1e-9):
    return all(abs(p-q) <= tol*(1+abs(q)) for p, q in zip(a, b))

bad = 0
for (N, C) in [(37, 72), (37, 100), (600, 24), (5, 1600)]:
    for rms in (0, 1):
        for prm in (0, 1):
            VEC = C % 8 == 0
            x = [[random.uniform(-2, 3) for _ in range(C)] for _ in range(N)]
            w = [random.uniform(0.5, 1.5) for _ in range(C)] if prm else None
            b = [random.uniform(-1, 1) for _ in range(C)] if prm and not rms else None
            out, mean, rstd = gnorm_fwd(x, w, b, N, C, rms, VEC)
            for row in range(N):
                o, m, r = ref_norm(x[row], w, b, rms)
                if not close(out[row], o) or abs(rstd[row]-r) > 1e-9: bad += 1; print("fwd", N, C, rms, prm, row)
            dout = [[random.uniform(-1, 1) for _ in range(C)] for _ in range(N)]
            dinp0 = [[random.uniform(-1, 1) for _ in range(C)] for _ in range(N)]
            dinp = [r_[:] for r_ in dinp0]
            warps = 16  # kBwdMaxWarps (halved only above shared memory)
            G = min(-(-N // warps), 1024)
            want_w, want_b = bool(prm), bool(prm and not rms)
            partial = gnorm_bwd(dinp, dout, x, w, mean, rstd, N, C, rms, VEC, want_w, want_b, warps, G)
            dw = [0.1]*C if want_w else None; db = [0.2]*C if want_b else None
            if partial is not None: gnorm_reduce(dw, db, partial, G, C)
            dres = [0.3]*C
            column_sum_into(dres, dinp, N, C)
            rdw = [0.1]*C; rdb = [0.2]*C; rdres = [0.3]*C
            for row in range(N):
                di, dwr = ref_bwd(x[row], dout[row], w, rms)
                upd = [dinp0[row][c]+di[c] for c in range(C)]
                if not close(dinp[row], upd): bad += 1; print("dinp", N, C, rms, prm, row)
                for c in range(C):
                    rdw[c] += dwr[c]; rdb[c] += dout[row][c]; rdres[c] += upd[c]
            if want_w and not close(dw, rdw, 1e-8): bad += 1; print("dweight", N, C, rms, prm)
            if want_b and not close(db, rdb, 1e-8): bad += 1; print("dbias", N, C, rms, prm)
            if not close(dres, rdres, 1e-8): bad += 1; print("dres_bias", N, C, rms, prm)
print("norms: mismatches", bad); FAIL = bad

# classifier_kernel<VEC, CAP> (one block per row, threads T) against the formula.
def classifier_row(row, target, V, Vp, dloss, cap, VEC, T):
    capped = (lambda v: cap*math.tanh(v/cap)) if cap else (lambda v: v)
    tl = capped(row[target])
    accs = []
    for t in range(T):
        m, s = -3.4e38, 0.0
        if VEC:
            j = t*8
            while j < V:
                f = [capped(row[j+k]) for k in range(8)]  # j+8 <= Vp
                mc = -3.4e38
                for k in range(8):
                    if j+k < V: mc = max(mc, f[k])
                if mc > m: s *= math.exp(m-mc); m = mc
                for k in range(8):
                    if j+k < V: s += math.exp(f[k]-m)
                j += T*8
        else:
            j = t
            while j < V:
                xv = capped(row[j])
                if xv > m: s = s*math.exp(m-xv)+1; m = xv
                else: s += math.exp(xv-m)
                j += T
        accs.append((m, s))
    M = max(a[0] for a in accs); S = sum(a[1]*math.exp(a[0]-M) for a in accs)
    lse = M + math.log(S)
    loss = lse - tl
    out = row[:]
    written = [False]*Vp
    step = 8 if VEC else 1
    for t in range(T):
        j = t*step
        while j < Vp:
            for k in range(step):
                c = j+k
                z = capped(row[c]); dz = 1-(z/cap)**2 if cap else 1
                out[c] = (math.exp(z-lse)-(1 if c == target else 0))*dloss*dz if c < V else 0.0
                written[c] = True
            j += T*step
    assert all(written)
    return loss, out

bad = 0
for (V, Vp, VEC) in [(1000, 1024, True), (61, 67, False), (64, 128, True), (50, 64, True)]:
    for cap in (0, 5.0, 15.0):
        for T in (32, 256):
            row = [random.uniform(-4, 4) for _ in range(V)] + [40.0]*(Vp-V)
            tgt = random.randrange(V)
            loss, out = classifier_row(row, tgt, V, Vp, 0.5, cap, VEC, T)
            z = [cap*math.tanh(v/cap) if cap else v for v in row[:V]]
            mx = max(z); lse = mx + math.log(sum(math.exp(v-mx) for v in z))
            rl = lse - z[tgt]
            ro = [(math.exp(z[c]-lse)-(c == tgt))*0.5*((1-(z[c]/cap)**2) if cap else 1) for c in range(V)] + [0.0]*(Vp-V)
            if abs(loss-rl) > 1e-9 or not close(out, ro, 1e-9): bad += 1; print("classifier", V, Vp, cap, T)
print("classifier: mismatches", bad); FAIL += bad

# bias_relu2_kernel / drelu2_kernel (grid-stride, i % OC for the bias) against the formula.
bad = 0
N, OC = 13, 7
prod = [random.uniform(-1, 1) for _ in range(N*OC)]; bias = [random.uniform(-1, 1) for _ in range(OC)]
total = N*OC; blocks, threads = 3, 8
pre = prod[:]; out = [None]*total
for bx in range(blocks):
    for tx in range(threads):
        i = bx*threads+tx
        while i < total:
            p = pre[i] + bias[i % OC]; r = max(p, 0.0); pre[i] = p; out[i] = r*r
            i += blocks*threads
for n in range(N):
    for o in range(OC):
        p = prod[n*OC+o]+bias[o]
        if abs(out[n*OC+o]-max(p, 0)**2) > 1e-12 or abs(pre[n*OC+o]-p) > 1e-12: bad += 1
d = [random.uniform(-1, 1) for _ in range(total)]; dd = d[:]
for i in range(total): dd[i] = 2*pre[i]*dd[i] if pre[i] > 0 else 0.0
# d/dp relu(p)^2 = 2 relu(p), by finite differences
for i in range(total):
    h = 1e-6; f = lambda p: max(p, 0)**2
    if abs((f(pre[i]+h)-f(pre[i]-h))/(2*h)*d[i] - dd[i]) > 1e-6: bad += 1
print("relu2: mismatches", bad); FAIL += bad

# --- adamw
import struct
f = lambda x: struct.unpack('f', struct.pack('f', x))[0]
random.seed(3)
kTile = 1024
def device(params, grads, m, v, ranges, lr, t, gs, clip, norm_sq, guard, b1, b2, eps, wd):
    # adamw_hyper_kernel
    skip = (norm_sq is not None and not math.isfinite(norm_sq)) or (guard is not None and not math.isfinite(guard))
    if norm_sq is not None and clip > 0:
        nrm = math.sqrt(norm_sq)
        if nrm > clip: gs *= clip / nrm
    H = dict(lr=lr, gs=f(gs), ic1=f(1/(1-b1**t)), ic2=f(1/(1-b2**t)), b1=f(b1), omb1=f(1-f(b1)), b2=f(b2), omb2=f(1-f(b2)), eps=f(eps), wd=f(wd))
    if skip: return
    first, blocks = [], 0
    for (off, size, dec, sc) in ranges:
        first.append(blocks); blocks += (size + kTile - 1)//kTile
    first.append(blocks)
    for bx in range(blocks):
        lo, hi = 0, len(ranges)-1
        while lo < hi:
            mid = (lo+hi+1)//2
            if first[mid] <= bx: lo = mid
            else: hi = mid-1
        off, size, dec, sc = ranges[lo]
        begin = off + (bx - first[lo])*kTile; end = min(off+size, begin+kTile)
        w = H['wd'] if dec else 0.0
        lr_r = f(H['lr']*sc)
        for j in range(begin, end):
            g = f(grads[j]*H['gs'])
            mi = f(f(H['b1']*m[j]) + f(H['omb1']*g)); vi = f(f(H['b2']*v[j]) + f(f(H['omb2']*g)*g))
            m[j] = mi; v[j] = vi
            params[j] = f(params[j] - f(lr_r*f(f(f(mi*H['ic1'])/f(f(math.sqrt(f(vi*H['ic2'])))+H['eps'])) + f(w*params[j]))))
def cpu(params, grads, m, v, ranges, lr, t, gs, clip, norm_sq, guard, b1, b2, eps, wd):
    if (norm_sq is not None and not math.isfinite(norm_sq)) or (guard is not None and not math.isfinite(guard)): return
    if norm_sq is not None and clip > 0:
        nrm = math.sqrt(norm_sq)
        if nrm > clip: gs *= clip/nrm
    tb1, tb2, teps, tgs = f(b1), f(b2), f(eps), f(gs)
    ic1, ic2 = f(1/(1-b1**t)), f(1/(1-b2**t))
    for (off, size, dec, sc) in ranges:
        twd = f(wd) if dec else 0.0; tlr = f(lr*sc)
        for i in range(off, off+size):
            gi = f(grads[i]*tgs)
            mi = f(f(tb1*m[i]) + f(f(1-tb1)*gi)); vi = f(f(tb2*v[i]) + f(f(f(1-tb2)*gi)*gi))
            m[i] = mi; v[i] = vi
            params[i] = f(params[i] - f(tlr*f(f(f(mi*ic1)/f(f(math.sqrt(f(vi*ic2)))+teps)) + f(twd*params[i]))))
n = 5000
ranges = [(0, 1500, True, 1.0), (1564, 2500, False, 0.3), (4064, 0, True, 2.0), (4064, 900, True, 5.0)]
bad = 0
for (norm_sq, guard) in [(9.0, 1.0), (0.25, 2.0), (float('nan'), 1.0), (4.0, float('inf')), (None, None)]:
    P = [f(random.uniform(-1, 1)) for _ in range(n)]; G = [f(random.uniform(-.1, .1)) for _ in range(n)]
    M = [f(random.uniform(-.01, .01)) for _ in range(n)]; V = [f(random.uniform(1e-5, 1e-4)) for _ in range(n)]
    a = [P[:], M[:], V[:]]; b = [P[:], M[:], V[:]]
    args = (6e-4, 7, 1.0, 1.0, norm_sq, guard, 0.9, 0.95, 1e-8, 0.1)
    device(a[0], G, a[1], a[2], ranges, *args); cpu(b[0], G, b[1], b[2], ranges, *args)
    if a != b: bad += 1; print("mismatch", norm_sq, guard)
    untouched = [i for i in range(n) if not any(o <= i < o+s for (o, s, _, _) in ranges)]
    if any(a[0][i] != P[i] for i in untouched): bad += 1; print("gap written")
    skipped = (norm_sq is not None and not math.isfinite(norm_sq)) or (guard is not None and not math.isfinite(guard))
    if skipped and a[0] != P: bad += 1; print("skip did not skip")
print("adamw: mismatches", bad); FAIL += bad
sys.exit(1 if FAIL else 0)
