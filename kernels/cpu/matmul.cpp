// Dense layer via BLAS (cblas_sgemm / cblas_dgemm), row-major throughout,
// and the same products as plain loops (the `cpu_matmul: loops` variant).
//
// forward:  out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC, optional)
//           with pre_act: pre_act = that product, out = act(pre_act)
// backward: dinp    (N,C)  = dout (N,OC) @ weight          (overwritten; skipped if null)
//           with dact_pre: dinp *= act'(dact_pre)          (the fused activation backward)
//           dweight (OC,C) += dout^T @ inp                 (accumulates; skipped if null)
//           dbias   (OC)   += sum_n dout[n,:]              (accumulates; skipped if null)
//           with dact_pre and dact_dbias: dact_dbias (C) += sum_n dinp[n,:], after the activation backward
//
// The activation fusions (GELU or ReLU²) are the CUDA epilogues' twins; here
// they are the product followed by the elementwise op, so they equal the
// unfused ops bit for bit.
//
// Threading: OpenMP splits each product into row blocks of its OUTPUT (rows
// of out and dinp, rows of dweight = output channels) and every thread calls a
// single-threaded BLAS gemm on its block. One thread pool does all the work:
// letting OpenBLAS run its own pool beside OpenMP's made both spin against
// each other on small machines (a 2-core step ran 2x slower). Blocks depend
// only on the thread count, so results repeat bit for bit at a fixed count.
// The bias column sums are split over output channels the same way, adding
// the N rows in order in double.
#include <cblas.h>
#include <omp.h>

#include <utility>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace gpt::cpu {

namespace {

// dst (C) += sums over the N rows of src (N,C): split over channels, rows in order, in double.
template <class T>
void add_column_sums(T* dst, const T* src, long N, int C) {
#pragma omp parallel
    {
        const int nth = omp_get_num_threads(), th = omp_get_thread_num();
        const int c0 = int(long(C) * th / nth), c1 = int(long(C) * (th + 1) / nth);
        std::vector<double> acc(size_t(c1 - c0), 0.0);
        for (long n = 0; n < N; n++) {
            const T* s = src + size_t(n) * C;
            for (int c = c0; c < c1; c++) acc[c - c0] += s[c];
        }
        for (int c = c0; c < c1; c++) dst[c] = T(dst[c] + acc[c - c0]);
    }
}

// C (M,N) = alpha * op(A) @ op(B) + beta * C, row-major.
void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}
void gemm(bool ta, bool tb, int M, int N, int K, const double* A, int lda, const double* B, int ldb, double beta, double* C, int ldc) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
}

// y (M) = A (M,K) @ x (K) + beta * y, row-major: the decode path (one row).
void gemv(int M, int K, const float* A, int lda, const float* x, float beta, float* y) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M, K, 1.0f, A, lda, x, 1, beta, y, 1);
}
void gemv(int M, int K, const double* A, int lda, const double* x, double beta, double* y) {
    cblas_dgemv(CblasRowMajor, CblasNoTrans, M, K, 1.0, A, lda, x, 1, beta, y, 1);
}

// This thread's share [begin, end) of n rows, inside an OpenMP parallel region.
std::pair<int, int> block(int n) {
    const int nth = omp_get_num_threads(), th = omp_get_thread_num();
    return {int(long(n) * th / nth), int(long(n) * (th + 1) / nth)};
}

// Up to this many rows, the forward is a few matrix-vector products (decoding).
constexpr int kDecodeRows = 4;

// The product part of the forward, into out.
template <class T>
void product_forward(const MatmulFwd& a, T* out) {
    const int N = a.N, C = a.C, OC = a.OC;
    const T* bias = a.bias.as<T>();
    if (N == 0 || OC == 0) return;
    if (bias) {
        // Seed every row with the bias, then let gemm add the product (beta = 1).
#pragma omp parallel for schedule(static)
        for (long n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[size_t(n) * OC + o] = bias[o];
    }
    const T* inp = a.inp.as<T>();
    const T* w = a.weight.as<T>();
    if (N <= kDecodeRows) {
        // Sampling feeds one row at a time: split the output channels instead of
        // the rows, and use gemv, which streams the weight once without packing it.
#pragma omp parallel
        {
            auto [o0, o1] = block(OC);
            for (int n = 0; n < N && o1 > o0; n++)
                gemv(o1 - o0, C, w + size_t(o0) * C, C, inp + size_t(n) * C, bias ? T(1) : T(0), out + size_t(n) * OC + o0);
        }
        return;
    }
#pragma omp parallel
    {
        auto [n0, n1] = block(N);
        if (n1 > n0) gemm(false, true, n1 - n0, OC, C, inp + size_t(n0) * C, C, w, C, bias ? T(1) : T(0), out + size_t(n0) * OC, OC);
    }
}

template <class T>
void product_backward(const MatmulBwd& a) {
    const int N = a.N, C = a.C, OC = a.OC;
    const T* dout = a.dout.as<T>();
    if (N == 0 || C == 0 || OC == 0) return;
    const T* w = a.weight.as<T>();
    const T* inp = a.inp.as<T>();
    T* dinp = a.dinp.as<T>();
    T* dw = a.dweight.as<T>();
#pragma omp parallel
    {
        if (dinp) {
            auto [n0, n1] = block(N);
            if (n1 > n0) gemm(false, false, n1 - n0, C, OC, dout + size_t(n0) * OC, OC, w, C, T(0), dinp + size_t(n0) * C, C);
        }
        auto [o0, o1] = block(OC);  // dweight rows o0..o1 = dout[:, o0..o1]^T @ inp
        if (dw && o1 > o0) gemm(true, false, o1 - o0, C, N, dout + o0, OC, inp, C, T(1), dw + size_t(o0) * C, C);
    }
    if (a.dbias) add_column_sums<T>(a.dbias.as<T>(), dout, N, OC);
}

// The `loops` variant: the textbook triple loops, parallel over output rows,
// accumulating in double. Far slower than BLAS; it exists so that the search
// and the autotuner have a real second variant to measure on any machine.
template <class T>
void loops_forward(const MatmulFwd& a, T* out) {
    const int N = a.N, C = a.C, OC = a.OC;
    const T* inp = a.inp.as<T>();
    const T* w = a.weight.as<T>();
    const T* bias = a.bias.as<T>();
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? double(bias[o]) : 0.0;
            for (int c = 0; c < C; c++) s += double(inp[size_t(n) * C + c]) * w[size_t(o) * C + c];
            out[size_t(n) * OC + o] = T(s);
        }
}

template <class T>
void loops_backward(const MatmulBwd& a) {
    const int N = a.N, C = a.C, OC = a.OC;
    const T* dout = a.dout.as<T>();
    const T* w = a.weight.as<T>();
    const T* inp = a.inp.as<T>();
    if (T* dinp = a.dinp.as<T>()) {
#pragma omp parallel for schedule(static)
        for (long n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                double s = 0;
                for (int o = 0; o < OC; o++) s += double(dout[size_t(n) * OC + o]) * w[size_t(o) * C + c];
                dinp[size_t(n) * C + c] = T(s);
            }
    }
    T* dw = a.dweight.as<T>();
    T* db = a.dbias.as<T>();
#pragma omp parallel for schedule(static)
    for (long o = 0; o < OC; o++) {
        for (int c = 0; dw && c < C; c++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += double(dout[size_t(n) * OC + o]) * inp[size_t(n) * C + c];
            dw[size_t(o) * C + c] = T(dw[size_t(o) * C + c] + s);
        }
        if (db) {
            double s = 0;
            for (int n = 0; n < N; n++) s += dout[size_t(n) * OC + o];
            db[o] = T(db[o] + s);
        }
    }
}

}  // namespace

template <class T>
void matmul_forward(const MatmulFwd& a, bool loops) {
    if (a.N == 0 || a.OC == 0) return;
    T* product = a.pre_act ? a.pre_act.as<T>() : a.out.as<T>();
    if (loops) loops_forward<T>(a, product);
    else product_forward<T>(a, product);
    if (a.pre_act) gelu_forward<T>({a.out, a.pre_act, size_t(a.N) * a.OC, a.act});
}

template <class T>
void matmul_backward(const MatmulBwd& a, bool loops) {
    if (a.N == 0 || a.C == 0 || a.OC == 0) return;
    if (loops) loops_backward<T>(a);
    else product_backward<T>(a);
    if (a.dinp && a.dact_pre) gelu_backward<T>({a.dinp, a.dact_pre, a.dinp, size_t(a.N) * a.C, a.act});
    if (a.dinp && a.dact_pre && a.dact_dbias) add_column_sums<T>(a.dact_dbias.as<T>(), a.dinp.as<T>(), a.N, a.C);
}

template void matmul_forward<float>(const MatmulFwd&, bool);
template void matmul_forward<double>(const MatmulFwd&, bool);
template void matmul_backward<float>(const MatmulBwd&, bool);
template void matmul_backward<double>(const MatmulBwd&, bool);

}  // namespace gpt::cpu
