// Muon: momentum, Nesterov, and Newton-Schulz orthogonalisation of each
// hidden weight matrix's update (Keller Jordan's Muon, as modded-nanogpt and
// nanochat run it; written here from the formulas in kernels/ops.h).
//
// For each of the `count` matrices (rows, cols) of the stack:
//   momentum (rows*cols) <- beta momentum + (1 - beta) g,   g = grads * grad_scale
//   u = nesterov ? beta momentum + (1 - beta) g : momentum
//   X (r,c) = u / (||u||_F + 1e-7), transposed when rows > cols so that r <= c
//   ns_steps times:  A = X X^T (r,r);  B = b A + c A A;  X = a X + B X
//   p <- p - lr wd p - lr sqrt(max(1, rows/cols)) X  (X transposed back)
// Products run in T (float for the trainer, double for the gradient checks)
// on single-threaded BLAS, split over row blocks of each product's output by
// OpenMP (the pattern of kernels/cpu/matmul.cpp), so results repeat bit for bit
// at a fixed thread count. The Frobenius norm is summed in double over fixed
// blocks added in order: the same bits at any thread count.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

namespace {

// C (M,N) = op(A) @ op(B) (beta 0), row-major.
void gemm(bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
}
void gemm(bool tb, int M, int N, int K, const double* A, int lda, const double* B, int ldb, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A, lda, B, ldb, 0.0, C, ldc);
}

// C (M,N) = A (M,K) @ op(B), parallel over row blocks of C.
template <class T>
void par_gemm(bool tb, int M, int N, int K, const T* A, const T* B, int ldb, T* C) {
#pragma omp parallel
    {
        const int nth = omp_get_num_threads(), th = omp_get_thread_num();
        const int m0 = int(long(M) * th / nth), m1 = int(long(M) * (th + 1) / nth);
        if (m1 > m0) gemm(tb, m1 - m0, N, K, A + size_t(m0) * K, K, B, ldb, C + size_t(m0) * N, N);
    }
}

// Sum of squares in double over fixed blocks, added in block order.
template <class T>
double sum_squares(const T* x, size_t n) {
    const long nblocks = long((n + kGradNormBlock - 1) / kGradNormBlock);
    std::vector<double> partial(size_t(nblocks), 0.0);
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < nblocks; blk++) {
        const size_t i0 = size_t(blk) * kGradNormBlock, i1 = std::min(n, i0 + kGradNormBlock);
        double s = 0;
        for (size_t i = i0; i < i1; i++) s += double(x[i]) * x[i];
        partial[size_t(blk)] = s;
    }
    double total = 0;
    for (double s : partial) total += s;
    return total;
}

}  // namespace

template <class T>
void muon_update(const Muon& a) {
    const int rows = a.rows, cols = a.cols;
    const bool tall = rows > cols;
    const int r = tall ? cols : rows, c = tall ? rows : cols;  // X is (r, c), r <= c
    const size_t m = size_t(rows) * cols;
    std::vector<T> X(m), Y(m), A(size_t(r) * r), Bm(size_t(r) * r);
    const T beta = T(a.beta), omb = T(1 - a.beta), gs = T(a.grad_scale);
    const T na = T(kMuonNsA), nb = T(kMuonNsB), nc = T(kMuonNsC);
    const T lr_wd = T(a.lr * a.weight_decay), lr_scaled = T(a.lr * std::sqrt(std::max(1.0, double(rows) / cols)));

    for (int k = 0; k < a.count; k++) {
        T* p = a.params.as<T>() + size_t(k) * m;
        const T* g = a.grads.as<T>() + size_t(k) * m;
        T* buf = a.momentum.as<T>() + size_t(k) * m;
        // Momentum, Nesterov, into X in the wide orientation.
#pragma omp parallel for schedule(static)
        for (long i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) {
                const size_t e = size_t(i) * cols + j;
                const T gi = g[e] * gs;
                const T bi = beta * buf[e] + omb * gi;
                buf[e] = bi;
                X[tall ? size_t(j) * rows + i : e] = a.nesterov ? beta * bi + omb * gi : bi;
            }
        const T inv = T(1.0 / (std::sqrt(sum_squares(X.data(), m)) + 1e-7));
#pragma omp parallel for schedule(static)
        for (long e = 0; e < long(m); e++) X[size_t(e)] *= inv;

        for (int s = 0; s < a.ns_steps; s++) {
            par_gemm<T>(true, r, r, c, X.data(), X.data(), c, A.data());    // A = X X^T   (r,r)
            par_gemm<T>(false, r, r, r, A.data(), A.data(), r, Bm.data());  // Bm = A A
#pragma omp parallel for schedule(static)
            for (long e = 0; e < long(r) * r; e++) Bm[size_t(e)] = nb * A[size_t(e)] + nc * Bm[size_t(e)];
            par_gemm<T>(false, r, c, r, Bm.data(), X.data(), c, Y.data());  // Y = B X     (r,c)
#pragma omp parallel for schedule(static)
            for (long e = 0; e < long(m); e++) X[size_t(e)] = na * X[size_t(e)] + Y[size_t(e)];
        }

#pragma omp parallel for schedule(static)
        for (long i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) {
                const size_t e = size_t(i) * cols + j;
                const T x = X[tall ? size_t(j) * rows + i : e];
                p[e] = p[e] - lr_wd * p[e] - lr_scaled * x;
            }
    }
}

template void muon_update<float>(const Muon&);
template void muon_update<double>(const Muon&);

}  // namespace gpt::cpu
