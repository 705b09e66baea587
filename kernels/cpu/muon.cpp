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
// on single-threaded BLAS. OpenMP splits the stack by MATRIX: each thread
// runs the whole update of its matrices, in one parallel region per call.
// Splitting each product over rows instead made a step run ~100 small
// parallel regions, and on a shared, oversubscribed machine every region
// waits for a thread the OS has parked: a stack of 4 (256,1024) matrices took
// 2.0 s that way and 0.15 s this way (2 cores at load 11, 2026-12-01). Every
// matrix is computed by one thread in a fixed order, so the result does not
// depend on the thread count at all.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

namespace {

// C (M,N) = A (M,K) @ op(B) (beta 0), row-major, single-threaded BLAS.
void gemm(bool tb, int M, int N, int K, const float* A, const float* B, int ldb, float* C) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, K, B, ldb, 0.0f, C, N);
}
void gemm(bool tb, int M, int N, int K, const double* A, const double* B, int ldb, double* C) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A, K, B, ldb, 0.0, C, N);
}

// One matrix's update; X, Y (rows*cols), A, Bm (s*s) are the caller's scratch.
template <class T>
void muon_one(const Muon& a, int k, std::vector<T>& X, std::vector<T>& Y, std::vector<T>& A, std::vector<T>& Bm) {
    const int rows = a.rows, cols = a.cols;
    const bool tall = rows > cols;
    const int r = tall ? cols : rows, c = tall ? rows : cols;  // X is (r, c), r <= c
    const size_t m = size_t(rows) * cols;
    const T beta = T(a.beta), omb = T(1 - a.beta), gs = T(a.grad_scale);
    const T na = T(kMuonNsA), nb = T(kMuonNsB), nc = T(kMuonNsC);
    const T lr_wd = T(a.lr * a.weight_decay), lr_scaled = T(a.lr * std::sqrt(std::max(1.0, double(rows) / cols)));
    T* p = a.params.as<T>() + size_t(k) * m;
    const T* g = a.grads.as<T>() + size_t(k) * m;
    T* buf = a.momentum.as<T>() + size_t(k) * m;
    // Momentum, Nesterov, into X in the wide orientation; the norm in double.
    double ss = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const size_t e = size_t(i) * cols + j;
            const T gi = g[e] * gs;
            const T bi = beta * buf[e] + omb * gi;
            buf[e] = bi;
            const T u = a.nesterov ? beta * bi + omb * gi : bi;
            X[tall ? size_t(j) * rows + i : e] = u;
            ss += double(u) * u;
        }
    const T inv = T(1.0 / (std::sqrt(ss) + 1e-7));
    for (size_t e = 0; e < m; e++) X[e] *= inv;

    for (int s = 0; s < a.ns_steps; s++) {
        gemm(true, r, r, c, X.data(), X.data(), c, A.data());    // A = X X^T   (r,r)
        gemm(false, r, r, r, A.data(), A.data(), r, Bm.data());  // Bm = A A
        for (size_t e = 0; e < size_t(r) * r; e++) Bm[e] = nb * A[e] + nc * Bm[e];
        gemm(false, r, c, r, Bm.data(), X.data(), c, Y.data());  // Y = B X     (r,c)
        for (size_t e = 0; e < m; e++) X[e] = na * X[e] + Y[e];
    }

    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const size_t e = size_t(i) * cols + j;
            const T x = X[tall ? size_t(j) * rows + i : e];
            p[e] = p[e] - lr_wd * p[e] - lr_scaled * x;
        }
}

}  // namespace

template <class T>
void muon_update(const Muon& a) {
    const size_t m = size_t(a.rows) * a.cols, s = size_t(std::min(a.rows, a.cols));
#pragma omp parallel
    {
        std::vector<T> X(m), Y(m), A(s * s), Bm(s * s);  // this thread's scratch
#pragma omp for schedule(static)
        for (int k = 0; k < a.count; k++) muon_one<T>(a, k, X, Y, A, Bm);
    }
}

template void muon_update<float>(const Muon&);
template void muon_update<double>(const Muon&);

}  // namespace gpt::cpu
