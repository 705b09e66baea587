// LD_PRELOAD fault injection for the tests that kill or starve `gpt` at
// chosen system calls (tests/test_checkpoint.cpp). Nothing here is linked
// into gpt; the tests run `env LD_PRELOAD=libgpt_fault_inject.so gpt ...`.
//
//   GPT_FAULT_KILL_AT=k        SIGKILL the process at its k-th namespace change
//                              (rename, renameat, renameat2, unlink, unlinkat,
//                              rmdir, remove), before the call takes effect
//   GPT_FAULT_TRACE=FILE       append "<n> <call> <path>" for every such call
//                              (how the tests count the kill points)
//   GPT_FAULT_NO_EXCHANGE=1    renameat2(RENAME_EXCHANGE) fails with EINVAL, as
//                              on a file system without it (NFS)
//   GPT_FAULT_SLOW=SUBSTR:MS   renames of paths containing SUBSTR first sleep
//                              MS milliseconds (signals do not cut the sleep):
//                              a window in which to signal a process mid-save
//   GPT_FAULT_ENOSPC=SUBSTR    writes to files whose path contains SUBSTR fail
//   GPT_FAULT_ENOSPC_AFTER=N   ... once N bytes in total have gone to them:
//                              a write is cut at the limit (a short write),
//                              the next one fails with ENOSPC, like a full disk
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static long kill_at = -1;
static long changes = 0;
static const char* trace_path = NULL;
static int no_exchange = 0;
static const char* enospc_substr = NULL;
static long long enospc_after = -1;
static long long enospc_written = 0;
static char slow_substr[1024];
static long slow_ms = 0;

__attribute__((constructor)) static void fault_init(void) {
    const char* k = getenv("GPT_FAULT_KILL_AT");
    if (k && *k) kill_at = atol(k);
    trace_path = getenv("GPT_FAULT_TRACE");
    if (trace_path && !*trace_path) trace_path = NULL;
    const char* x = getenv("GPT_FAULT_NO_EXCHANGE");
    no_exchange = x && *x == '1';
    enospc_substr = getenv("GPT_FAULT_ENOSPC");
    if (enospc_substr && !*enospc_substr) enospc_substr = NULL;
    const char* a = getenv("GPT_FAULT_ENOSPC_AFTER");
    enospc_after = a && *a ? atoll(a) : 0;
    const char* slow = getenv("GPT_FAULT_SLOW");
    const char* colon = slow ? strrchr(slow, ':') : NULL;
    if (colon && (size_t)(colon - slow) < sizeof slow_substr) {
        memcpy(slow_substr, slow, (size_t)(colon - slow));
        slow_substr[colon - slow] = 0;
        slow_ms = atol(colon + 1);
    }
}

static void maybe_slow(const char* path) {
    if (slow_ms <= 0 || !path || !strstr(path, slow_substr)) return;
    struct timespec left = {slow_ms / 1000, (slow_ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static void* next(const char* name) { return dlsym(RTLD_NEXT, name); }

// One namespace change is about to happen: trace it, and die when it is the chosen one.
static void change(const char* call, const char* path) {
    changes++;
    if (trace_path) {
        int (*real_open)(const char*, int, ...) = (int (*)(const char*, int, ...))next("open");
        ssize_t (*real_write)(int, const void*, size_t) = (ssize_t(*)(int, const void*, size_t))next("write");
        int fd = real_open(trace_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            char line[4200];
            int n = snprintf(line, sizeof line, "%ld %s %s\n", changes, call, path ? path : "");
            if (n > 0) real_write(fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
            close(fd);
        }
    }
    if (kill_at > 0 && changes == kill_at) raise(SIGKILL);
}

int rename(const char* a, const char* b) {
    maybe_slow(a);
    change("rename", a);
    return ((int (*)(const char*, const char*))next("rename"))(a, b);
}

int renameat(int da, const char* a, int db, const char* b) {
    change("renameat", a);
    return ((int (*)(int, const char*, int, const char*))next("renameat"))(da, a, db, b);
}

int renameat2(int da, const char* a, int db, const char* b, unsigned int flags) {
    if (no_exchange && (flags & RENAME_EXCHANGE)) {
        errno = EINVAL;
        return -1;
    }
    maybe_slow(a);
    change("renameat2", a);
    return ((int (*)(int, const char*, int, const char*, unsigned int))next("renameat2"))(da, a, db, b, flags);
}

int unlink(const char* p) {
    change("unlink", p);
    return ((int (*)(const char*))next("unlink"))(p);
}

int unlinkat(int d, const char* p, int flags) {
    change("unlinkat", p);
    return ((int (*)(int, const char*, int))next("unlinkat"))(d, p, flags);
}

int rmdir(const char* p) {
    change("rmdir", p);
    return ((int (*)(const char*))next("rmdir"))(p);
}

int remove(const char* p) {
    change("remove", p);
    return ((int (*)(const char*))next("remove"))(p);
}

// Whether fd is a file the ENOSPC injection applies to.
static int starved(int fd) {
    if (!enospc_substr || fd < 0) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strstr(target, enospc_substr) != NULL;
}

ssize_t write(int fd, const void* buf, size_t count) {
    ssize_t (*real)(int, const void*, size_t) = (ssize_t(*)(int, const void*, size_t))next("write");
    if (count == 0 || !starved(fd)) return real(fd, buf, count);
    long long room = enospc_after - enospc_written;
    if (room <= 0) {
        errno = ENOSPC;
        return -1;
    }
    if ((long long)count > room) count = (size_t)room;
    ssize_t w = real(fd, buf, count);
    if (w > 0) enospc_written += w;
    return w;
}
