#!/usr/bin/env bash
# The one prepared check for a lent GPU host (see ../shared/device/README.md):
#   deps -> configure (Ninja, Release, sm_90) -> build (all cores) -> CUDA tests
#   -> the rest of the test suite -> `gpt bench step --profile` for GPT-2 124M
#   -> the NCCL path at world size 1 -> `gpt bench step --profile` at B=64 and
#   B=32, T=1024 -> a short table, printed last.
#
# Usage: here, tools/gpu-deps fills .deps/ with the packages the host lacks;
# on the host, from the project root, with .deps carried:
#   source tools/gpu-env.sh && tools/gpu-check.sh
# Open MPI does not travel: the check configures with GPT_ENABLE_MPI=OFF.
# Logs go to $OUT when it is set (the device tool brings them back), else to
# build-gpu/gpu-check/. Each stage has its own timeout, and all of them
# together stay inside GPU_CHECK_BUDGET_S seconds (default 450: 7.5 minutes,
# under the 8 the check is sized for); a stage that would start with too little
# time left is skipped and says so. Exit code: 0 when every stage passed, 3
# when a dependency is missing (nothing was built), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
START=$SECONDS
JOBS=$(nproc)
BUILD=build-gpu
LOGS=${OUT:-$BUILD/gpu-check}
mkdir -p "$LOGS"
SUMMARY=()   # "stage|status|seconds" rows for the final table
FAILED=0

left() { echo $((BUDGET_S - (SECONDS - START))); }

# stage NAME CAP_S LOG CMD...: runs CMD with a timeout of min(CAP_S, time left),
# its output to the terminal and to LOG; records the outcome.
stage() {
    local name=$1 cap=$2 log=$3
    shift 3
    local t
    t=$(left)
    ((t > cap)) && t=$cap
    if ((t < 15)); then
        echo "== $name: SKIPPED (only $(left)s of the ${BUDGET_S}s budget left)"
        SUMMARY+=("$name|skipped (no time)|0")
        FAILED=1
        return 1
    fi
    echo "== $name (timeout ${t}s, log $log)"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    local status=ok
    if ((rc == 124 || rc == 137)); then status="TIMEOUT after ${t}s"; elif ((rc != 0)); then status="FAILED (exit $rc)"; fi
    SUMMARY+=("$name|$status|$((SECONDS - t0))")
    [[ $status == ok ]] || FAILED=1
    return "$rc"
}

print_summary() {
    echo
    echo "== stages"
    printf '  %-26s %-26s %6s\n' stage status seconds
    for row in "${SUMMARY[@]}"; do
        IFS='|' read -r n s d <<<"$row"
        printf '  %-26s %-26s %6s\n' "$n" "$s" "$d"
    done
}

# ---------------------------------------------------------------------------
# Dependencies. CMake needs (cmake/Dependencies.cmake): yaml-cpp, GoogleTest,
# OpenMP, a BLAS with cblas.h, PCRE2 (libpcre2-8 >= 10.34, through
# pkg-config), the CUDA toolkit with cuBLASLt and cuDNN. The GPU host has
# CUDA, cuDNN, CMake and Ninja but no apt: the rest must travel in .deps
# (unpacked under a prefix listed in CMAKE_PREFIX_PATH by unpack-deps.sh).
echo "== gpu-check: $(date -u +%FT%TZ), $JOBS cores, budget ${BUDGET_S}s, logs in $LOGS"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH

PREFIXES=()
IFS=':' read -r -a _pp <<<"${CMAKE_PREFIX_PATH:-}"
for p in "${_pp[@]}"; do [[ -n $p && -d $p ]] && PREFIXES+=("$p"); done
PREFIXES+=(/usr /usr/local /usr/local/cuda)

find_in_prefixes() {  # find_in_prefixes SUBDIR NAME...: first match of a file NAME under PREFIX/SUBDIR
    local sub=$1
    shift
    for p in "${PREFIXES[@]}"; do
        [[ -d $p/$sub ]] || continue
        for n in "$@"; do
            local f
            f=$(find "$p/$sub" -maxdepth 4 -name "$n" -print -quit 2>/dev/null)
            [[ -n $f ]] && { echo "$f"; return 0; }
        done
    done
    return 1
}

MISSING=()
CMAKE_EXTRA=()
command -v cmake >/dev/null || MISSING+=("cmake")
command -v ninja >/dev/null || MISSING+=("ninja (ninja-build)")
command -v nvcc >/dev/null || MISSING+=("nvcc (CUDA toolkit)")
find_in_prefixes lib libcudnn.so >/dev/null || find_in_prefixes lib64 libcudnn.so >/dev/null || MISSING+=("cuDNN (libcudnn.so)")
find_in_prefixes lib yaml-cpp-config.cmake >/dev/null || find_in_prefixes share yaml-cpp-config.cmake >/dev/null ||
    MISSING+=("yaml-cpp (Debian: libyaml-cpp-dev libyaml-cpp0.7; ../shared/device/fetch-deps.sh)")
find_in_prefixes lib GTestConfig.cmake >/dev/null || MISSING+=("GoogleTest (Debian: libgtest-dev; ../shared/device/fetch-deps.sh)")
find_in_prefixes include cblas.h >/dev/null || MISSING+=("cblas.h (Debian: libopenblas-pthread-dev)")
blas_lib=$(find_in_prefixes lib libopenblas.so libblas.so) || MISSING+=("a BLAS library (Debian: libopenblas-pthread-dev libopenblas0-pthread libgfortran5)")
if [[ -n ${blas_lib:-} && $blas_lib != /usr/* ]]; then
    # Unpacked Debian packages lack the update-alternatives links: point CMake
    # and the loader at the directory that holds the library itself.
    blas_dir=$(dirname "$blas_lib")
    CMAKE_EXTRA+=("-DCMAKE_LIBRARY_PATH=$blas_dir")
    export LD_LIBRARY_PATH=$blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if ! command -v pkg-config >/dev/null; then
    MISSING+=("pkg-config (Debian: pkgconf, pkgconf-bin, libpkgconf3)")
else
    pc=$(find_in_prefixes lib libpcre2-8.pc)
    if [[ -n ${pc:-} && $pc != /usr/lib/* ]]; then
        # A carried .pc file names prefix=/usr; make it name where it was unpacked.
        root=${pc%%/usr/lib/*}
        sed -i "s|^prefix=/usr\$|prefix=$root/usr|" "$pc"
        pc_dir=$(dirname "$pc")
        export PKG_CONFIG_PATH=$pc_dir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
        export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    pkg-config --exists 'libpcre2-8 >= 10.34' || MISSING+=("PCRE2 >= 10.34 with pkg-config data (Debian: libpcre2-dev)")
fi
if ((${#MISSING[@]})); then
    echo "gpu-check: MISSING DEPENDENCIES on this host, nothing was built:" | tee "$LOGS/gpu-check-deps.log"
    for m in "${MISSING[@]}"; do echo "  - $m" | tee -a "$LOGS/gpu-check-deps.log"; done
    echo "  (searched prefixes: ${PREFIXES[*]}; run tools/gpu-deps here, carry .deps, and source tools/gpu-env.sh first)" |
        tee -a "$LOGS/gpu-check-deps.log"
    exit 3
fi
echo "== dependencies found"

# ---------------------------------------------------------------------------
stage configure 120 "$LOGS/configure.log" \
    cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DGPT_ENABLE_MPI=OFF "${CMAKE_EXTRA[@]}" ||
    { print_summary; exit 1; }
grep -q 'gpt: CUDA: yes' "$LOGS/configure.log" ||
    { echo "gpu-check: CMake did not enable the CUDA backend (see the 'gpt: CUDA:' line above)"; print_summary; exit 1; }
stage build 300 "$LOGS/build.log" cmake --build "$BUILD" -j "$JOBS" || { print_summary; exit 1; }
if ldd "$BUILD/gpt" | grep -q 'not found'; then
    echo "gpu-check: the gpt binary has unresolved shared libraries:"
    ldd "$BUILD/gpt" | grep 'not found'
fi

# The CUDA tests one at a time (they share the one GPU), then everything else in parallel.
stage "ctest -R Cuda" 180 "$LOGS/ctest-cuda.log" ctest --test-dir "$BUILD" -R Cuda --output-on-failure -V --timeout 170
# The benchmarks below keep 150 s of the budget for themselves.
rest_cap=$(($(left) - 150))
((rest_cap > 180)) && rest_cap=180
stage "ctest (the rest)" "$rest_cap" "$LOGS/ctest-rest.log" ctest --test-dir "$BUILD" -E Cuda --output-on-failure -j "$JOBS" --timeout 170

# The NCCL path at world size 1: torchrun's variables (no MPI on this host), so
# the unique id goes through the TCP rendezvous and every collective of a
# 60-step tiny run, including the bucketed all-reduce, runs through NCCL.
stage "nccl world 1 (torchrun)" 60 "$LOGS/nccl-world1.log" \
    env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 \
    "$BUILD/gpt" train --set run.backend=cuda --set run.max_steps=60 --set run.val_every=30 --set run.out_dir="$BUILD/nccl-run" &&
    { grep -q 'over nccl' "$LOGS/nccl-world1.log" || { echo "gpu-check: the run did not use NCCL"; FAILED=1; }; }
stage "nccl bench comm (world 1)" 40 "$LOGS/nccl-bench-comm.log" \
    env RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29518 \
    "$BUILD/gpt" bench comm --backend cuda --bytes 67108864 --repeats 5

# ---------------------------------------------------------------------------
# GPT-2 124M steps: median of 10 after 3 warm-up, per-op device time. Peak
# device memory is also sampled with nvidia-smi (context, library workspaces
# and cuDNN plans included), beside the backend's own count of its allocations.
BENCH_ROWS=()
for B in 64 32; do
    log="$LOGS/bench-B$B.log"
    smi="$BUILD/gpu-check-smi-B$B.txt"
    smi_pid=
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$smi" 2>/dev/null &
        smi_pid=$!
    fi
    stage "bench d12 B=$B T=1024" 90 "$log" \
        "$BUILD/gpt" bench step -c configs/gpt2-124m.yaml --set run.backend=cuda --set run.batch_size=$B --set run.seq_len=1024 \
        --warmup 3 --repeats 10 --profile
    [[ -n $smi_pid ]] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null
    ms=$(awk '/ms\/step \(median/ {print $1; exit}' "$log")
    tps=$(awk '$2 == "tokens/s" {print $1; exit}' "$log")
    mfu=$(grep -o 'MFU [0-9.]*%' "$log" | head -1 | cut -d' ' -f2)
    mem=$(grep -o 'peak memory [0-9.]* MiB' "$log" | head -1 | awk '{print $3}')
    smi_max=$( [[ -s $smi ]] && sort -n "$smi" | tail -1)
    top=$(awk '/per op/ {on=1; next} on && NF >= 4 && n < 4 {printf "%s%s %s", (n ? ", " : ""), $1, $3; n++}' "$log")
    BENCH_ROWS+=("$B|${ms:--}|${tps:--}|${mfu:--}|${mem:--}|${smi_max:--}|${top:--}")
done

print_summary
echo
echo "== GPT-2 124M (d12), T=1024, bf16, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
printf '  %-4s %9s %10s %6s %12s %12s  %s\n' B ms/step tokens/s MFU "alloc MiB" "device MiB" "top ops (share of op time)"
for row in "${BENCH_ROWS[@]}"; do
    IFS='|' read -r b ms tps mfu mem smi top <<<"$row"
    printf '  %-4s %9s %10s %6s %12s %12s  %s\n' "$b" "$ms" "$tps" "$mfu" "$mem" "$smi" "$top"
done
echo "  (reference on the H100: llm.c 216.9 ms/step at B=64; PyTorch + torch.compile 131.2 ms/step)"
echo "== gpu-check done in $((SECONDS - START))s: $([[ $FAILED == 0 ]] && echo 'all stages ok' || echo 'SOME STAGES FAILED')"
exit $FAILED
