// Asynchronous copies into shared memory (cp.async), shared by the flash
// kernels (attention.cu) and the Hopper ones (attention_hopper.cu).
#pragma once

#include <cstdint>

namespace gpt::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid (the
// source must still be a valid address, the caller passes the tile base).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Double buffering over tiles: with a next tile, issue its loads (load(), into
// the other buffer) and wait for every group but that one; else wait for all.
// The caller's __syncthreads then makes this tile's buffer visible to all.
template <class Load>
__device__ __forceinline__ void cp_async_prefetch(bool has_next, Load&& load) {
    if (has_next) {
        load();
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
}

}  // namespace gpt::cuda
