#include "kernels/host_memory.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

namespace gpt {

namespace {

bool read_u64(const std::string& path, uint64_t& out) {
    std::ifstream f(path);
    std::string s;
    if (!(f >> s) || s.empty()) return false;
    if (s == "max") {  // cgroup v2: no limit
        out = UINT64_MAX;
        return true;
    }
    char* end = nullptr;
    out = std::strtoull(s.c_str(), &end, 10);
    return end && *end == '\0';
}

// A `key value` line of a memory.stat or meminfo file (value in its own unit).
bool read_key(const std::string& path, const std::string& key, uint64_t& out) {
    std::ifstream f(path);
    std::string k;
    uint64_t v;
    while (f >> k >> v) {
        if (k == key) {
            out = v;
            return true;
        }
        f.ignore(4096, '\n');
    }
    return false;
}

bool is_dir(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// "/a/b" -> {"/a/b", "/a", ""}: the cgroup and every ancestor up to the root.
std::vector<std::string> levels(std::string path) {
    std::vector<std::string> out;
    while (!path.empty() && path.back() == '/') path.pop_back();
    for (;;) {
        out.push_back(path);
        if (path.empty()) break;
        const size_t slash = path.rfind('/');
        path = slash == std::string::npos ? "" : path.substr(0, slash);
    }
    return out;
}

}  // namespace

std::string human_bytes(double b) {
    char buf[32];
    if (b >= double(1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
    else std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1 << 20));
    return buf;
}

HostMemory host_memory(const std::string& proc_root, const std::string& cgroup_root) {
    HostMemory m;
    uint64_t kb = 0;
    if (read_key(proc_root + "/meminfo", "MemAvailable:", kb)) {
        m.available = kb * 1024;
        m.limited_by = "MemAvailable " + human_bytes(double(m.available));
    }
    auto consider = [&](uint64_t limit, uint64_t usage, uint64_t inactive, const std::string& what) {
        if (limit >= (uint64_t(1) << 62)) return;  // "no limit" (v1 writes a page-rounded 2^63)
        const uint64_t held = usage > inactive ? usage - inactive : 0;
        const uint64_t room = limit > held ? limit - held : 0;
        if (m.available == 0 || room < m.available) {
            m.available = room;
            m.limited_by = what + " (limit " + human_bytes(double(limit)) + ", " + human_bytes(double(held)) + " in use)";
        }
    };
    std::ifstream cg(proc_root + "/self/cgroup");
    std::string line;
    while (std::getline(cg, line)) {
        // "hierarchy-id:controllers:path"
        const size_t a = line.find(':'), b = line.find(':', a == std::string::npos ? 0 : a + 1);
        if (a == std::string::npos || b == std::string::npos) continue;
        const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
        if (line.compare(0, a, "0") == 0 && controllers.empty()) {
            // cgroup v2: mounted at the root, or beside v1 at unified/.
            const std::string root = is_dir(cgroup_root + "/unified") ? cgroup_root + "/unified" : cgroup_root;
            for (const auto& lv : levels(path)) {
                const std::string dir = root + lv;
                uint64_t limit, current = 0, inactive = 0;
                if (!read_u64(dir + "/memory.max", limit)) continue;
                read_u64(dir + "/memory.current", current);
                read_key(dir + "/memory.stat", "inactive_file", inactive);
                consider(limit, current, inactive, "cgroup memory.max of " + (lv.empty() ? std::string("/") : lv));
            }
        } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
            const std::string root = cgroup_root + "/memory";
            for (const auto& lv : levels(path)) {
                const std::string dir = root + lv;
                uint64_t limit, usage = 0, inactive = 0;
                if (!read_u64(dir + "/memory.limit_in_bytes", limit)) continue;
                read_u64(dir + "/memory.usage_in_bytes", usage);
                read_key(dir + "/memory.stat", "total_inactive_file", inactive);
                consider(limit, usage, inactive, "cgroup memory.limit_in_bytes of " + (lv.empty() ? std::string("/") : lv));
            }
        }
    }
    return m;
}

HostMemory host_memory() { return host_memory("/proc", "/sys/fs/cgroup"); }

}  // namespace gpt
