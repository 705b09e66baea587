// How much host memory this process may still use: the tightest of the
// kernel's MemAvailable and, for every cgroup level it runs under, the
// memory limit less what that cgroup already holds (cgroup v2 memory.max /
// memory.current, v1 memory.limit_in_bytes / memory.usage_in_bytes; inactive
// page cache, which the kernel reclaims first, does not count as held).
// Inside a container or a job with a memory limit, MemAvailable alone is the
// host's figure and would promise memory the OOM killer then takes back.
#pragma once

#include <cstdint>
#include <string>

namespace gpt {

struct HostMemory {
    uint64_t available = 0;  // bytes; 0 = nothing could be read
    std::string limited_by;  // what set `available`, for messages
};

HostMemory host_memory();

// The same from another root (tests: a fake /proc and /sys/fs/cgroup).
HostMemory host_memory(const std::string& proc_root, const std::string& cgroup_root);

// "1.50 GiB", "12.0 MiB".
std::string human_bytes(double bytes);

}  // namespace gpt
