#!/usr/bin/python3
"""Host emulation of kernels/cuda/attention_hopper.cu (kernels.attention: wgmma).

No GPU has run this kernel yet. This replays, block by block and warpgroup by
warpgroup, what the kernel does with shared memory: where load_tiled's cp.async
chunks land (kmajor / mnmajor), the descriptors each wgmma gets (start address,
LBO, SBO, the 128-element k16 step, the warpgroup's row offset), where the P
fragments are stored, and how the accumulator fragments map to rows and
columns (d[4 nt + e] -> row 16 w + group + 8 (e >> 1), column 8 nt + 2 tig +
(e & 1)). The wgmma instructions are modelled as PTX documents them for the
no-swizzle layout: operand element (mn, k) at start + (mn // 8) SBO + (k // 8)
LBO + (mn % 8) 16 + (k % 8) 2 bytes when K-major, + (k % 8) 16 + (mn % 8) 2
when MN-major (trans = 1); with p_regs = 1 the A operand of P V comes from the
kernel's pa registers, read in mma.m16n8k16's A layout per warp. Out and lse
are compared with plain causal attention in float64 at odd T, both head sizes,
with P through shared memory and in registers.

Run: /usr/bin/python3 tools/emulate_wgmma_attention.py (exits 1 on a mismatch).
A review aid for the layouts, not a test of the hardware: only the CUDA tests
on a Hopper GPU are.
"""
import math
import sys

import torch

KWG, KBK = 2, 64
KBQ = 64 * KWG
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


def kmajor(mn, k, K):
    return ((mn >> 3) * (K >> 3) + (k >> 3)) * 64 + (mn & 7) * 8 + (k & 7)


def mnmajor(mn, k, K):
    return ((mn >> 3) * (K >> 3) + (k >> 3)) * 64 + (k & 7) * 8 + (mn & 7)


def desc(start_elem, sbo_bytes):
    """The kernel's smem_desc (addresses in bytes from the start of dynamic shared memory)."""
    a = start_elem * 2
    d = ((a & 0x3FFFF) >> 4) | ((128 >> 4) << 16) | (((sbo_bytes & 0x3FFFF) >> 4) << 32)
    return d


def read_operand(smem, d, rows, trans):
    """A rows x 16 operand (rows = M or N, 16 = K) as the hardware reads it from descriptor d."""
    start = (d & 0x3FFF) << 4
    lbo = ((d >> 16) & 0x3FFF) << 4
    sbo = ((d >> 32) & 0x3FFF) << 4
    out = torch.empty(rows, 16)
    for mn in range(rows):
        for k in range(16):
            inner = (k % 8) * 16 + (mn % 8) * 2 if trans else (mn % 8) * 16 + (k % 8) * 2
            addr = start + (mn // 8) * sbo + (k // 8) * lbo + inner
            assert addr % 2 == 0
            out[mn, k] = smem[addr // 2]
    return out


def wgmma_ss(D, smem, da, db, N, trans_b):
    """D (64 x N) += A (64 x 16) B^T, B read as N x 16."""
    A = read_operand(smem, da, 64, False)
    B = read_operand(smem, db, N, trans_b)
    D += A.double().matmul(B.double().t()).float()


def load_tiled(smem, base, g, ld_rows, r0, T, ROWS, HD, nmajor):
    for i in range(ROWS * (HD // 8)):
        r, c = divmod(i, HD // 8)
        off = base + (mnmajor(c * 8, r, ROWS) if nmajor else kmajor(r, c * 8, HD))
        if r0 + r < T:
            smem[off:off + 8] = g[r0 + r, c * 8:c * 8 + 8]
        else:
            smem[off:off + 8] = 0.0


def frag_rows_cols(N):
    """For every (warp, lane, register i): the (row, column) it holds of a 64 x N accumulator."""
    m = []
    for warp in range(4):
        for lane in range(32):
            group, tig = lane >> 2, lane & 3
            for i in range(N // 2):
                nt, e = divmod(i, 4)
                m.append((warp, lane, i, 16 * warp + group + 8 * (e >> 1), 8 * nt + 2 * tig + (e & 1)))
    return m


def wgmma_rs(D, A, smem, db, N, trans_b):
    """D (64 x N) += A (64 x 16, from registers) B^T, B read as N x 16."""
    B = read_operand(smem, db, N, trans_b)
    D += A.double().matmul(B.double().t()).float()


def p_as_registers(Pm, kt):
    """p_regs = 1: the A operand (64 x 16, k16 block kt) the kernel's pa[kt] registers hold, assembled as
    wgmma reads A from registers (mma.m16n8k16's A layout per warp: a0 row group, k 2 tig, +1; a1 row
    group + 8; a2, a3 the same at k + 8), from each thread's fragment registers s[i]."""
    A = torch.full((64, 16), float('nan'))
    frag = {}
    for (warp, lane, i, row, col) in frag_rows_cols(KBK):
        frag[(warp, lane, i)] = bf16(Pm[row, col])
    for warp in range(4):
        for lane in range(32):
            group, tig = lane >> 2, lane & 3
            s = lambda i: frag[(warp, lane, i)]
            pa = [(s(8 * kt), s(8 * kt + 1)), (s(8 * kt + 2), s(8 * kt + 3)), (s(8 * kt + 4), s(8 * kt + 5)), (s(8 * kt + 6), s(8 * kt + 7))]
            for r in range(4):
                row = 16 * warp + group + 8 * (r & 1)
                k = 2 * tig + 8 * (r >> 1)
                A[row, k], A[row, k + 1] = pa[r]
    assert not torch.isnan(A).any()
    return A


def run_block(q, k, v, T, HD, q0, pregs=False):
    """One block (KWG warpgroups, rows q0 .. q0+KBQ-1) of one (b, h): returns out rows and lse."""
    sQ, sK, sV = 0, KBQ * HD, KBQ * HD + 2 * KBK * HD
    sP = sV + 2 * KBK * HD
    smem = torch.full((sP + KWG * 64 * KBK,), float('nan'))
    scale_log2 = LOG2E / math.sqrt(HD)
    nkt = (min(T, q0 + KBQ) + KBK - 1) // KBK
    load_tiled(smem, sQ, q, None, q0, T, KBQ, HD, False)
    load_tiled(smem, sK, k, None, 0, T, KBK, HD, False)
    load_tiled(smem, sV, v, None, 0, T, KBK, HD, True)
    sbo_hd, sbo_bk = (HD // 8) * 128, (KBK // 8) * 128
    O = [torch.zeros(64, HD) for _ in range(KWG)]
    m = [torch.full((64,), -math.inf) for _ in range(KWG)]
    l = [torch.zeros(64) for _ in range(KWG)]
    for j in range(nkt):
        buf = j & 1
        if j + 1 < nkt:
            load_tiled(smem, sK + (buf ^ 1) * KBK * HD, k, None, (j + 1) * KBK, T, KBK, HD, False)
            load_tiled(smem, sV + (buf ^ 1) * KBK * HD, v, None, (j + 1) * KBK, T, KBK, HD, True)
        k0 = j * KBK
        k_s, v_s = sK + buf * KBK * HD, sV + buf * KBK * HD
        for g in range(KWG):
            qg = q0 + 64 * g
            if not k0 <= qg + 63:
                continue
            S = torch.zeros(64, KBK)
            sQg = sQ + kmajor(64 * g, 0, HD)
            for kt in range(HD // 16):
                wgmma_ss(S, smem, desc(sQg + 128 * kt, sbo_hd), desc(k_s + 128 * kt, sbo_hd), KBK, False)
            # The softmax per fragment, row by row as each thread's registers see it.
            X = S * scale_log2
            rows = torch.arange(64).unsqueeze(1) + qg
            keys = torch.arange(KBK).unsqueeze(0) + k0
            X = torch.where((keys > rows) | (keys >= T), torch.tensor(-math.inf), X)
            mx = X.max(dim=1).values
            mnew = torch.maximum(m[g], mx)
            mu = torch.where(mnew == -math.inf, torch.zeros(64), mnew)
            alpha = torch.exp2(m[g] - mu)
            m[g] = mnew
            Pm = torch.exp2(X - mu.unsqueeze(1))
            l[g] = l[g] * alpha + Pm.sum(dim=1)
            O[g] *= alpha.unsqueeze(1)
            if pregs:
                for kt in range(KBK // 16):
                    wgmma_rs(O[g], p_as_registers(Pm, kt), smem, desc(v_s + 128 * kt, sbo_bk), HD, True)
                continue
            # P into the warpgroup's K-major tile exactly as the kernel's bf16x2 stores place it.
            sPg = sP + g * 64 * KBK
            for warp in range(4):
                for lane in range(32):
                    group, tig = lane >> 2, lane & 3
                    for nt in range(KBK // 8):
                        row, key = 16 * warp + group, 8 * nt + 2 * tig
                        for rr in (row, row + 8):
                            off = sPg + kmajor(rr, key, KBK)
                            smem[off] = bf16(Pm[rr, key])
                            smem[off + 1] = bf16(Pm[rr, key + 1])
            for kt in range(KBK // 16):
                wgmma_ss(O[g], smem, desc(sPg + 128 * kt, sbo_bk), desc(v_s + 128 * kt, sbo_bk), HD, True)
    out = torch.cat([O[g] / l[g].unsqueeze(1) for g in range(KWG)])
    lse = torch.cat([m[g] * LN2 + torch.log(l[g]) for g in range(KWG)])
    return out, lse


def check_fragment_map():
    """Every (row, column) of a 64 x N accumulator is held by exactly one (thread, register)."""
    for N in (64, 128):
        cells = [(r, c) for (_, _, _, r, c) in frag_rows_cols(N)]
        assert len(cells) == len(set(cells)) == 64 * N, N


def main():
    torch.manual_seed(0)
    check_fragment_map()
    # The cp.async chunks of one row: 8 consecutive elements each, and every element of a tile exactly once.
    for HD in (64, 128):
        for maj, K in ((False, HD), (True, KBK)):
            seen = set()
            for r in range(KBK):
                for c in range(HD // 8):
                    off = mnmajor(c * 8, r, KBK) if maj else kmajor(r, c * 8, HD)
                    for i in range(8):
                        want = mnmajor(c * 8 + i, r, KBK) if maj else kmajor(r, c * 8 + i, HD)
                        assert off + i == want
                        seen.add(off + i)
            assert seen == set(range(KBK * HD))
    worst = 0.0
    for T, HD in ((77, 64), (130, 128), (1, 64), (200, 64)):
        q, k, v = (bf16(torch.empty(T, HD).uniform_(-2, 2)) for _ in range(3))
        s = (q.double() @ k.double().t()) / math.sqrt(HD)
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
        ref_lse = torch.logsumexp(s, dim=1)
        ref = torch.softmax(s, dim=1) @ v.double()
        for q0, pregs in [(q0, p) for q0 in range(0, T, KBQ) for p in (False, True)]:
            out, lse = run_block(q, k, v, T, HD, q0, pregs)
            n = min(KBQ, T - q0)
            err = ((out[:n].double() - ref[q0:q0 + n]).norm() / ref[q0:q0 + n].norm()).item()
            lerr = (lse[:n].double() - ref_lse[q0:q0 + n]).abs().max().item()
            worst = max(worst, err)
            ok = err < 1e-2 and lerr < 1e-3 and not torch.isnan(out[:n]).any()
            print(f"T={T:4d} HD={HD:3d} p_regs={int(pregs)} rows {q0:4d}..{q0 + n - 1:4d}: out rel L2 {err:.2e}, lse max abs {lerr:.2e}  {'ok' if ok else 'MISMATCH'}")
            if not ok:
                sys.exit(1)
    print(f"all blocks match (worst out rel L2 {worst:.2e}, the bf16 rounding of P)")


if __name__ == "__main__":
    main()
