#include "data/shard.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <map>

#include "data/files.h"
#include "kernels/error.h"

namespace gpt {

static_assert(std::endian::native == std::endian::little, "shards are little-endian on disk");

namespace {

std::string where(const std::string& path, const std::string& context) {
    std::string s = "shard '" + path + "': ";
    return context.empty() ? s : context + ": " + s;
}

std::string what_of(const std::string& context) { return context.empty() ? "shard" : context + ": shard"; }

// Checks a header against the file size; `h` holds the first 256 int32.
ShardHeader check_header(const int32_t* h, uint64_t file_bytes, const std::string& path,
                         const std::string& context) {
    ShardHeader r;
    r.magic = h[0];
    r.version = h[1];
    r.file_bytes = file_bytes;
    if (r.magic != kShardMagic)
        bad_input(where(path, context) + "bad magic " + std::to_string(r.magic) + " (expected " +
                  std::to_string(kShardMagic) + ": not an llm.c token shard)");
    if (r.version != kShardVersion)
        bad_input(where(path, context) + "unsupported version " + std::to_string(r.version) +
                  " (expected " + std::to_string(kShardVersion) + ": uint16 tokens)");
    if (h[2] <= 0)
        bad_input(where(path, context) + "header says " + std::to_string(h[2]) +
                  " tokens: a shard must hold at least one token");
    r.count = uint64_t(uint32_t(h[2]));
    if (h[3] == kShardSetMark) {
        r.set.id = uint64_t(uint32_t(h[4])) | uint64_t(uint32_t(h[5])) << 32;
        r.set.split = h[6];
        r.set.index = h[7];
        r.set.count = h[8];
        if (r.set.id == 0 || (r.set.split != 0 && r.set.split != 1) || r.set.count < 1 || r.set.index < 0 || r.set.index >= r.set.count)
            bad_input(where(path, context) + "corrupted set information in the header (set id " + std::to_string(r.set.id) + ", split " +
                      std::to_string(r.set.split) + ", shard " + std::to_string(r.set.index) + " of " + std::to_string(r.set.count) + ")");
    }
    uint64_t want = kShardHeaderBytes + 2 * r.count;
    if (file_bytes < want)
        bad_input(where(path, context) + "truncated: header says " + std::to_string(r.count) +
                  " tokens (" + std::to_string(want) + " bytes) but the file has " +
                  std::to_string(file_bytes) + " bytes");
    if (file_bytes > want)
        bad_input(where(path, context) + "trailing bytes: header says " + std::to_string(r.count) +
                  " tokens (" + std::to_string(want) + " bytes) but the file has " +
                  std::to_string(file_bytes) + " bytes");
    return r;
}

void too_small(const std::string& path, const std::string& context, uint64_t bytes) {
    bad_input(where(path, context) + (bytes == 0 ? "empty file" : "too small") + " (" +
              std::to_string(bytes) + " bytes): a shard has a " + std::to_string(kShardHeaderBytes) +
              "-byte header");
}

}  // namespace

void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int vocab_size, const ShardSet* set) {
    if (tokens.empty()) bad_input("shard '" + path + "': no tokens to write (a shard needs at least one)");
    if (tokens.size() > uint64_t(INT32_MAX))
        bad_input("shard '" + path + "': " + std::to_string(tokens.size()) +
                  " tokens do not fit the int32 count of the header");
    const int64_t limit = std::min<int64_t>(vocab_size, 65536);
    std::vector<uint16_t> body(tokens.size());
    for (size_t i = 0; i < tokens.size(); i++) {
        if (tokens[i] < 0 || tokens[i] >= limit)
            bad_input("shard '" + path + "': token " + std::to_string(tokens[i]) + " at index " +
                      std::to_string(i) + " is outside [0, " + std::to_string(limit) + ")");
        body[i] = uint16_t(tokens[i]);
    }
    int32_t header[kShardHeaderInts] = {};
    header[0] = kShardMagic;
    header[1] = kShardVersion;
    header[2] = int32_t(tokens.size());
    if (set) {
        header[3] = kShardSetMark;
        header[4] = int32_t(uint32_t(set->id));
        header[5] = int32_t(uint32_t(set->id >> 32));
        header[6] = set->split;
        header[7] = set->index;
        header[8] = set->count;
    }

    // Written beside the target and renamed, so a reader never sees half a shard.
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) run_failed("shard '" + path + "': cannot create '" + tmp + "': " + std::strerror(errno));
    auto fail = [&](const char* what) {
        std::string msg = "shard '" + path + "': " + what + " '" + tmp + "': " + std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        run_failed(msg);
    };
    auto write_all = [&](const void* p, size_t n) {
        const char* c = static_cast<const char*>(p);
        while (n > 0) {
            ssize_t w = ::write(fd, c, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) fail("cannot write");
            c += w;
            n -= size_t(w);
        }
    };
    write_all(header, sizeof header);
    write_all(body.data(), body.size() * sizeof(uint16_t));
    if (::fsync(fd) != 0) fail("cannot fsync");
    if (::close(fd) != 0) {
        std::string msg = "shard '" + path + "': cannot close '" + tmp + "': " + std::strerror(errno);
        ::unlink(tmp.c_str());
        run_failed(msg);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        std::string msg = "shard '" + path + "': cannot rename '" + tmp + "': " + std::strerror(errno);
        ::unlink(tmp.c_str());
        run_failed(msg);
    }
}

ShardHeader read_shard_header(const std::string& path, const std::string& context) {
    const InputFile f = InputFile::open(path, what_of(context));
    if (f.size() < kShardHeaderBytes) too_small(path, context, f.size());
    int32_t h[kShardHeaderInts];
    f.read_at(h, sizeof h, 0);
    return check_header(h, f.size(), path, context);
}

Shard::Shard(const std::string& path, int vocab_size, const std::string& context, const std::string& vocab_key) : path_(path) {
    const InputFile f = InputFile::open(path, what_of(context));
    struct stat before;
    if (::fstat(f.fd(), &before) != 0) bad_input(where(path, context) + "cannot stat: " + std::strerror(errno));
    if (f.size() < kShardHeaderBytes) too_small(path, context, f.size());
    int32_t h[kShardHeaderInts];
    f.read_at(h, sizeof h, 0);
    header_ = check_header(h, f.size(), path, context);
    tokens_.resize(header_.count);
    f.read_at(tokens_.data(), header_.count * 2, kShardHeaderBytes);
    struct stat after;
    if (::fstat(f.fd(), &after) != 0 || after.st_size != before.st_size || after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != before.st_mtim.tv_nsec)
        bad_input(where(path, context) + "changed while it was being read (written to in place by another process?)");
    const uint16_t* t = tokens_.data();
    const uint64_t n = header_.count;
    // Max first (vectorizes); find the offender only when there is one.
    uint16_t mx = 0;
    for (uint64_t i = 0; i < n; i++) mx = std::max(mx, t[i]);
    if (int64_t(mx) >= int64_t(vocab_size)) {
        uint64_t i = 0;
        while (int64_t(t[i]) < int64_t(vocab_size)) i++;
        bad_input(where(path, context) + "token " + std::to_string(t[i]) + " at index " + std::to_string(i) + " is >= " + vocab_key + " " +
                  std::to_string(vocab_size));
    }
}

void check_shard_sets(const std::vector<std::string>& files, const std::vector<ShardHeader>& headers, const std::string& key) {
    struct Seen {
        int32_t count = 0;
        std::vector<std::string> files;
        std::vector<bool> have;
    };
    std::map<std::pair<uint64_t, int32_t>, Seen> sets;  // (id, split) -> shards
    for (size_t i = 0; i < files.size(); i++) {
        const ShardSet& s = headers[i].set;
        if (s.id == 0) continue;
        Seen& seen = sets[{s.id, s.split}];
        if (seen.files.empty()) {
            seen.count = s.count;
            seen.have.assign(size_t(s.count), false);
        }
        if (s.count != seen.count || seen.have[size_t(s.index)])
            bad_input(key + ": shard '" + files[i] + "' contradicts '" + seen.files.front() + "' of the same gpt data prepare run (set " +
                      std::to_string(s.id) + "): its header was changed or the file was copied");
        seen.have[size_t(s.index)] = true;
        seen.files.push_back(files[i]);
    }
    if (sets.size() < 2) return;
    for (const auto& [k, seen] : sets) {
        const size_t have = size_t(std::count(seen.have.begin(), seen.have.end(), true));
        if (have == size_t(seen.count)) continue;
        std::string others;
        for (const auto& [k2, s2] : sets)
            if (k2 != k) others = s2.files.front();
        bad_input(key + ": the shards mix two `gpt data prepare` runs, and one is incomplete: " + std::to_string(have) + " of the " +
                  std::to_string(seen.count) + " shards of the run that wrote '" + seen.files.front() + "' are here, beside shards of another run ('" +
                  others + "'). A re-run into the same directory was interrupted: run gpt data prepare again (it replaces them all)");
    }
}

std::vector<std::string> glob_files(const std::string& pattern, const std::string& key) {
    if (pattern.empty()) bad_input(key + " is empty: set it to a glob of token shards (e.g. 'data/fineweb_train_*.bin')");
    glob_t g{};
    int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
    std::vector<std::string> out;
    if (rc == 0)
        for (size_t i = 0; i < g.gl_pathc; i++) out.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    if (rc == GLOB_NOSPACE) run_failed(key + "='" + pattern + "': glob ran out of memory");
    if (out.empty())
        bad_input(key + "='" + pattern + "': no file matches this pattern" +
                  (rc == GLOB_ABORTED ? " (a directory in it could not be read)" : ""));
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace gpt
