#!/usr/bin/env bash
# Runs a CUDA GoogleTest binary (tests/test_kernels_cuda) to its end even when
# a test loses the CUDA context: a kernel that traps or faults leaves a sticky
# error, and every later test in that process would fail on it. The binary
# exits (code 3, a "[ CONTEXT  ]" line) after such a test, or may crash; this
# script then starts a fresh process for the tests that have not run, up to
# MAX_RESTARTS times, and prints one summary line for all of them. A process
# whose output has not grown for CUDA_TEST_STALL_S seconds (default 45) is
# killed: a kernel stuck at a hardware barrier (bar.sync) cannot time out by
# itself, and would otherwise hold every later test until gpu-check's stage
# limit; its test counts as lost (hung) and the rest run in a fresh process.
#
#   tools/cuda-tests.sh BINARY LOGDIR [MAX_RESTARTS, default 8]
#
# Writes LOGDIR/cuda-tests.K.log and .xml per process (K = 1, 2, ...) and
# LOGDIR/cuda-tests-failed.txt (failed tests, and those that lost the context,
# crashed or hung). Exit status: 0 when every test passed or was skipped, 1 when a
# test failed, lost the context, crashed or hung, 2 on a usage error.
set -u
if (($# < 2)); then
    echo "usage: tools/cuda-tests.sh BINARY LOGDIR [MAX_RESTARTS]" >&2
    exit 2
fi
BIN=$1 DIR=$2 MAX=${3:-8} STALL=${CUDA_TEST_STALL_S:-45}
[[ -x $BIN ]] || { echo "cuda-tests: $BIN is not an executable" >&2; exit 2; }
mkdir -p "$DIR" || exit 2

done_list=()  # every test that reached a result, lost the context, crashed or hung
passed=0 failed=0 skipped=0 lost=0 procs=0
: >"$DIR/cuda-tests-failed.txt"
for ((k = 1; k <= MAX + 1; k++)); do
    filter='*'
    ((${#done_list[@]})) && filter="-$(IFS=:; echo "${done_list[*]}")"
    log="$DIR/cuda-tests.$k.log"
    procs=$k
    "$BIN" --gtest_filter="$filter" --gtest_output="xml:$DIR/cuda-tests.$k.xml" >"$log" 2>&1 &
    pid=$! size=-1 since=$SECONDS hung=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 0.2
        now=$(stat -c %s "$log" 2>/dev/null || echo 0)
        if [[ $now != "$size" ]]; then
            size=$now since=$SECONDS
        elif ((SECONDS - since >= STALL)); then
            hung=1
            kill -KILL "$pid" 2>/dev/null
            break
        fi
    done
    wait "$pid"
    rc=$?
    cat "$log"
    # Results: the per-test lines carry a time, "(N ms)"; the closing lists repeat names without one.
    while IFS= read -r line; do
        name=$(sed -E 's/^\[ *[A-Z]+ *\] ([^ ]+) \(.*$/\1/' <<<"$line")
        done_list+=("$name")
        case $line in
        "[       OK ]"*) ((passed++)) ;;
        "[  SKIPPED ]"*) ((skipped++)) ;;
        *) ((failed++)); echo "[  FAILED  ] $name" >>"$DIR/cuda-tests-failed.txt" ;;
        esac
    done < <(grep -E '^\[ +(OK|FAILED|SKIPPED) +\] [^ ]+ \([0-9]+ ms\)' "$log")
    # A test that started and has no result lost the context (or crashed or hung the process).
    last=$(grep -E '^\[ RUN +\] ' "$log" | tail -n 1 | sed -E 's/^\[ RUN +\] //')
    if [[ -n $last ]] && ! grep -F -- "] $last (" "$log" | grep -qE '^\[ +(OK|FAILED|SKIPPED) +\] '; then
        done_list+=("$last")
        ((lost++))
        why=$(grep -m1 '^\[ CONTEXT  \]' "$log" | sed -E 's/^\[ CONTEXT  \] //')
        ((hung)) && why="hung: no output for $STALL s, killed"
        echo "[  LOST    ] $last (${why:-the process ended with status $rc})" >>"$DIR/cuda-tests-failed.txt"
        continue
    fi
    grep -qE '^\[==========\] [0-9]+ tests? from' "$log" && break  # the process ran every test it was given
    echo "cuda-tests: process $k ended (status $rc) without a result or a test in progress; stopping" >&2
    break
done
echo "[==========] cuda tests: $passed passed, $failed failed, $lost lost (a lost context, a crash or a hang), $skipped skipped, in $procs process(es)"
sed 's/^/  /' "$DIR/cuda-tests-failed.txt"
((failed + lost == 0))
