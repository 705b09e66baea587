#include "data/prepare.h"

#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "data/files.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "kernels/error.h"
#include "train/config.h"

namespace gpt {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// JSON: a validating scanner that materialises only the one string we want.
// A general JSON library builds a tree per line; this touches each byte once.

namespace {

struct JsonScanner {
    const char* p;
    const char* end;
    std::string err;

    bool fail(const std::string& what) {
        if (err.empty()) err = what;
        return false;
    }
    void ws() {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    }
    static int hex(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }
    bool hex4(uint32_t& v) {
        if (end - p < 4) return fail("not JSON: truncated \\u escape");
        v = 0;
        for (int i = 0; i < 4; i++) {
            int h = hex(p[i]);
            if (h < 0) return fail("not JSON: bad \\u escape");
            v = v * 16 + uint32_t(h);
        }
        p += 4;
        return true;
    }
    // At the opening quote. Appends the unescaped string to `out` when non-null.
    bool string(std::string* out) {
        p++;
        for (;;) {
            const char* run = p;
            while (p < end && *p != '"' && *p != '\\' && uint8_t(*p) >= 0x20) p++;
            if (out) out->append(run, size_t(p - run));
            if (p >= end) return fail("not JSON: unterminated string");
            char c = *p++;
            if (c == '"') return true;
            if (c != '\\') return fail("not JSON: unescaped control character in a string");
            if (p >= end) return fail("not JSON: unterminated string");
            char e = *p++;
            char lit = 0;
            switch (e) {
                case '"': lit = '"'; break;
                case '\\': lit = '\\'; break;
                case '/': lit = '/'; break;
                case 'b': lit = '\b'; break;
                case 'f': lit = '\f'; break;
                case 'n': lit = '\n'; break;
                case 'r': lit = '\r'; break;
                case 't': lit = '\t'; break;
                case 'u': {
                    uint32_t cp;
                    if (!hex4(cp)) return false;
                    if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                        const char* save = p;
                        p += 2;
                        uint32_t lo;
                        if (!hex4(lo)) return false;
                        if (lo >= 0xDC00 && lo < 0xE000)
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        else
                            p = save;  // a lone high surrogate; the next escape stands alone
                    }
                    // Lone surrogates cannot be UTF-8: U+FFFD, as a lenient decoder would.
                    if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
                    if (out) append_utf8(*out, cp);
                    continue;
                }
                default: return fail(std::string("not JSON: bad escape '\\") + e + "'");
            }
            if (out) *out += lit;
        }
    }
    bool literal(const char* word) {
        size_t n = std::strlen(word);
        if (size_t(end - p) < n || std::memcmp(p, word, n) != 0) return fail("not JSON: unexpected character");
        p += n;
        return true;
    }
    bool number() {
        const char* s = p;
        if (p < end && *p == '-') p++;
        const char* d = p;
        while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' || *p == '+' || *p == '-'))
            p++;
        if (p == d) return fail("not JSON: unexpected character");
        double v;
        auto [q, ec] = std::from_chars(s, p, v);
        if (ec != std::errc() || q != p) return fail("not JSON: bad number");
        return true;
    }
    bool value(int depth) {
        if (depth > 256) return fail("not JSON: nested too deeply");
        ws();
        if (p >= end) return fail("not JSON: unexpected end of line");
        switch (*p) {
            case '"': return string(nullptr);
            case '{': {
                p++;
                ws();
                if (p < end && *p == '}') { p++; return true; }
                for (;;) {
                    ws();
                    if (p >= end || *p != '"') return fail("not JSON: expected a key");
                    if (!string(nullptr)) return false;
                    ws();
                    if (p >= end || *p != ':') return fail("not JSON: expected ':'");
                    p++;
                    if (!value(depth + 1)) return false;
                    ws();
                    if (p < end && *p == ',') { p++; continue; }
                    if (p < end && *p == '}') { p++; return true; }
                    return fail("not JSON: expected ',' or '}'");
                }
            }
            case '[': {
                p++;
                ws();
                if (p < end && *p == ']') { p++; return true; }
                for (;;) {
                    if (!value(depth + 1)) return false;
                    ws();
                    if (p < end && *p == ',') { p++; continue; }
                    if (p < end && *p == ']') { p++; return true; }
                    return fail("not JSON: expected ',' or ']'");
                }
            }
            case 't': return literal("true");
            case 'f': return literal("false");
            case 'n': return literal("null");
            default: return number();
        }
    }
};

const char* kind_name(char c) {
    switch (c) {
        case '"': return "a string";
        case '{': return "an object";
        case '[': return "an array";
        case 't':
        case 'f': return "a boolean";
        case 'n': return "null";
        default: return "a number";
    }
}

}  // namespace

std::string json_string_field(std::string_view line, std::string_view field, std::string& out) {
    out.clear();
    JsonScanner s{line.data(), line.data() + line.size(), {}};
    bool found = false;
    std::string key;
    std::string bad_kind;
    s.ws();
    if (s.p >= s.end || *s.p != '{') {
        // Say "not an object" only for valid JSON of another kind.
        if (s.p < s.end && s.value(0)) {
            s.ws();
            if (s.p == s.end)
                return std::string("not a JSON object (") + kind_name(line[line.find_first_not_of(" \t\r\n")]) + ")";
        }
        return "not JSON: expected '{'";
    }
    s.p++;
    s.ws();
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            s.ws();
            if (s.p >= s.end || *s.p != '"') return "not JSON: expected a key";
            key.clear();
            if (!s.string(&key)) return s.err;
            s.ws();
            if (s.p >= s.end || *s.p != ':') return "not JSON: expected ':'";
            s.p++;
            s.ws();
            if (key == field) {
                if (s.p < s.end && *s.p == '"') {
                    out.clear();
                    if (!s.string(&out)) return s.err;
                    found = true;
                    bad_kind.clear();
                } else {
                    if (s.p < s.end) bad_kind = kind_name(*s.p);
                    if (!s.value(1)) return s.err;
                    found = false;
                }
            } else if (!s.value(1)) {
                return s.err;
            }
            s.ws();
            if (s.p < s.end && *s.p == ',') { s.p++; continue; }
            if (s.p < s.end && *s.p == '}') { s.p++; break; }
            return "not JSON: expected ',' or '}'";
        }
    }
    s.ws();
    if (s.p != s.end) return "not JSON: trailing characters after the object";
    if (!bad_kind.empty()) return "field '" + std::string(field) + "' is " + bad_kind + ", not a string";
    if (!found) return "no field '" + std::string(field) + "'";
    return "";
}

namespace {

// ---------------------------------------------------------------------------
// Signals: remove the shard temp file being written, then exit 130.

char g_tmp_path[4096];
volatile std::sig_atomic_t g_tmp_set = 0;

extern "C" void on_prepare_signal(int) {
    if (g_tmp_set) ::unlink(g_tmp_path);
    ::_exit(130);
}

struct SignalGuard {
    using Handler = void (*)(int);
    Handler old_int, old_term;
    SignalGuard() {
        old_int = std::signal(SIGINT, on_prepare_signal);
        old_term = std::signal(SIGTERM, on_prepare_signal);
    }
    ~SignalGuard() {
        std::signal(SIGINT, old_int);
        std::signal(SIGTERM, old_term);
    }
};

void write_shard_tracked(const std::string& path, const std::vector<int32_t>& tokens, int vocab) {
    // The name write_shard uses for its temp file (data/shard.h).
    std::string tmp = path + ".tmp." + std::to_string(::getpid());
    if (tmp.size() < sizeof g_tmp_path) {
        std::memcpy(g_tmp_path, tmp.c_str(), tmp.size() + 1);
        g_tmp_set = 1;
    }
    try {
        write_shard(path, tokens, vocab);
    } catch (...) {
        g_tmp_set = 0;
        throw;
    }
    g_tmp_set = 0;
}

// ---------------------------------------------------------------------------
// Inputs.

struct SourceFile {
    std::string path;
    bool json;
};

bool has_json_ext(const std::string& path) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    return ext == ".jsonl" || ext == ".json";
}

bool is_glob(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// Reports a problem with an input: stop mode throws, skip mode logs and counts.
struct Problems {
    bool stop;
    std::ostream& log;
    uint64_t shown = 0;
    static constexpr uint64_t kMaxShown = 100;
    void report(const std::string& msg, uint64_t& counter, bool& progress_dirty) {
        if (stop) bad_input(msg + " (--on-error stop)");
        counter++;
        if (shown < kMaxShown) {
            if (progress_dirty) log << "\n";
            progress_dirty = false;
            log << "gpt data prepare: skipped: " << msg << "\n";
        } else if (shown == kMaxShown) {
            log << "gpt data prepare: further problems are counted, not shown\n";
        }
        shown++;
    }
};

void add_dir(const fs::path& dir, const fs::path& out_dir, std::vector<SourceFile>& files,
             std::vector<std::string>& errors) {
    std::vector<std::string> found;
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec), end;
    if (ec) {
        errors.push_back("input directory '" + dir.string() + "': cannot read: " + ec.message());
        return;
    }
    for (; it != end; it.increment(ec)) {
        if (ec) {
            errors.push_back("input directory '" + dir.string() + "': cannot read: " + ec.message());
            return;
        }
        const fs::path& p = it->path();
        std::string leaf = p.filename().string();
        std::error_code ec2;
        if (it->is_directory(ec2)) {
            std::error_code ec3;
            if (leaf.starts_with(".") || fs::equivalent(p, out_dir, ec3)) it.disable_recursion_pending();
            continue;
        }
        if (leaf.starts_with(".") || !it->is_regular_file(ec2)) continue;
        found.push_back(p.string());
    }
    std::sort(found.begin(), found.end());
    for (auto& f : found) files.push_back({f, has_json_ext(f)});
}

// Expands the command-line inputs in order; problems go to `errors`, in order.
std::vector<SourceFile> expand_inputs(const std::vector<std::string>& inputs, const fs::path& out_dir,
                                     std::vector<std::string>& errors) {
    std::vector<SourceFile> files;
    for (const auto& in : inputs) {
        std::error_code ec;
        auto st = fs::status(in, ec);
        std::vector<std::string> paths;
        if (fs::exists(st)) {
            paths.push_back(in);
        } else if (is_glob(in)) {
            glob_t g{};
            int rc = ::glob(in.c_str(), 0, nullptr, &g);
            if (rc == 0)
                for (size_t i = 0; i < g.gl_pathc; i++) paths.push_back(g.gl_pathv[i]);
            ::globfree(&g);
            if (paths.empty()) {
                errors.push_back("input '" + in + "': the pattern matched nothing");
                continue;
            }
            std::sort(paths.begin(), paths.end());
        } else {
            errors.push_back("input '" + in + "': " + (ec ? ec.message() : std::string("no such file or directory")));
            continue;
        }
        for (const auto& p : paths) {
            if (fs::is_directory(p, ec))
                add_dir(p, out_dir, files, errors);
            else
                files.push_back({p, has_json_ext(p)});
        }
    }
    return files;
}

// ---------------------------------------------------------------------------
// The reader: streams files into batches of documents.

enum class ItemKind : uint8_t { Text, JsonLine, Error };

struct Item {
    uint64_t off, len;  // in Batch::buf: the document, the JSON line, or the error message
    uint64_t line;      // 1-based line of a JSON line
    uint32_t file;
    ItemKind kind;
};

struct Batch {
    std::string buf;
    std::vector<Item> items;
    uint64_t input_bytes = 0;
    uint64_t files_done = 0;
};

struct ItemResult {
    std::vector<int32_t> tokens;  // without the leading <|endoftext|>
    std::string error;            // non-empty: the item is a problem
    uint64_t text_bytes = 0;
};

class BatchQueue {
public:
    explicit BatchQueue(size_t cap) : cap_(cap) {}
    // Blocks while full; false when the consumer has cancelled.
    bool push(Batch&& b) {
        std::unique_lock lk(m_);
        cv_.wait(lk, [&] { return q_.size() < cap_ || cancelled_; });
        if (cancelled_) return false;
        q_.push_back(std::move(b));
        cv_.notify_all();
        return true;
    }
    void finish(std::exception_ptr e = nullptr) {
        std::lock_guard lk(m_);
        done_ = true;
        error_ = e;
        cv_.notify_all();
    }
    // Next batch; nullopt at the end (rethrows the reader's exception).
    std::optional<Batch> pop() {
        std::unique_lock lk(m_);
        cv_.wait(lk, [&] { return !q_.empty() || done_; });
        if (!q_.empty()) {
            Batch b = std::move(q_.front());
            q_.pop_front();
            cv_.notify_all();
            return b;
        }
        if (error_) std::rethrow_exception(error_);
        return std::nullopt;
    }
    bool cancelled() {
        std::lock_guard lk(m_);
        return cancelled_;
    }
    void cancel() {
        std::lock_guard lk(m_);
        cancelled_ = true;
        cv_.notify_all();
    }

private:
    size_t cap_;
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<Batch> q_;
    bool done_ = false, cancelled_ = false;
    std::exception_ptr error_;
};

class Reader {
public:
    Reader(const std::vector<SourceFile>& files, size_t batch_bytes, BatchQueue& q)
        : files_(files), batch_bytes_(batch_bytes), q_(q) {}

    void run() {
        try {
            for (uint32_t f = 0; f < files_.size(); f++) {
                if (!read_file(f)) return;
                cur_.files_done++;
            }
            if (!cur_.items.empty() || cur_.files_done) q_.push(std::move(cur_));
            q_.finish();
        } catch (...) {
            q_.finish(std::current_exception());
        }
    }

private:
    void add(ItemKind kind, uint32_t file, uint64_t line, const char* p, size_t n) {
        cur_.items.push_back({cur_.buf.size(), n, line, file, kind});
        cur_.buf.append(p, n);
    }
    bool flush_if_full() {
        if (cur_.buf.size() < batch_bytes_) return true;
        if (!q_.push(std::move(cur_))) return false;
        cur_ = Batch{};
        cur_.buf.reserve(batch_bytes_ + batch_bytes_ / 4);
        return true;
    }
    void error(uint32_t f, const std::string& what) {
        std::string msg = "input file '" + files_[f].path + "': " + what;
        add(ItemKind::Error, f, 0, msg.data(), msg.size());
    }

    bool read_file(uint32_t f) {
        const SourceFile& in = files_[f];
        // Regular files only: a FIFO would block the reader (and the run) forever.
        gpt::InputFile file;
        try {
            file = gpt::InputFile::open(in.path, "input file");
        } catch (const Error& e) {
            const std::string msg = e.what();
            const std::string prefix = "input file '" + in.path + "': ";
            error(f, msg.rfind(prefix, 0) == 0 ? msg.substr(prefix.size()) : msg);
            return flush_if_full();
        }
        const int fd = file.fd();
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        constexpr size_t kChunk = 1 << 20;
        std::string carry;  // JSONL: the incomplete last line of the previous chunk
        std::string chunk(kChunk, '\0');
        std::string text;   // plain text: the whole file
        uint64_t line = 0;
        for (;;) {
            ssize_t n = ::read(fd, chunk.data(), kChunk);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) {
                // Whatever was read stays out: the file is skipped as a whole
                // for plain text; JSONL lines already queued stay.
                error(f, std::string("read error: ") + std::strerror(errno));
                return flush_if_full();
            }
            if (n == 0) break;
            cur_.input_bytes += uint64_t(n);
            if (!in.json) {
                text.append(chunk.data(), size_t(n));
                continue;
            }
            const char* p = chunk.data();
            const char* e = p + n;
            while (p < e) {
                const char* nl = static_cast<const char*>(std::memchr(p, '\n', size_t(e - p)));
                if (!nl) {
                    carry.append(p, size_t(e - p));
                    break;
                }
                line++;
                if (!carry.empty()) {
                    carry.append(p, size_t(nl - p));
                    add_line(f, line, carry.data(), carry.size());
                    carry.clear();
                } else {
                    add_line(f, line, p, size_t(nl - p));
                }
                p = nl + 1;
                if (!flush_if_full()) return false;
            }
            if (q_.cancelled()) return false;
        }
        if (in.json) {
            if (!carry.empty()) add_line(f, ++line, carry.data(), carry.size());
        } else {
            add(ItemKind::Text, f, 0, text.data(), text.size());
        }
        return flush_if_full();
    }

    void add_line(uint32_t f, uint64_t line, const char* p, size_t n) {
        bool blank = true;
        for (size_t i = 0; i < n && blank; i++) blank = p[i] == ' ' || p[i] == '\t' || p[i] == '\r';
        if (!blank) add(ItemKind::JsonLine, f, line, p, n);
    }

    const std::vector<SourceFile>& files_;
    size_t batch_bytes_;
    BatchQueue& q_;
    Batch cur_;
};

// ---------------------------------------------------------------------------
// Output: one token stream per split, cut into shards of exactly N tokens.

class SplitWriter {
public:
    SplitWriter(std::string prefix, int64_t shard_tokens, int vocab, std::vector<std::string>& written)
        : prefix_(std::move(prefix)), n_(size_t(shard_tokens)), vocab_(vocab), written_(written) {
        buf_.reserve(std::min<size_t>(n_, size_t(1) << 22));
    }
    void add(const std::vector<int32_t>& doc) {
        append_one(Tokenizer::kEndOfText);
        const int32_t* p = doc.data();
        size_t left = doc.size();
        while (left > 0) {
            size_t take = std::min(left, n_ - buf_.size());
            buf_.insert(buf_.end(), p, p + take);
            p += take;
            left -= take;
            if (buf_.size() == n_) flush();
        }
    }
    void finish() {
        if (!buf_.empty()) flush();
    }
    // A hash of every token written and of the shard boundaries: the shards'
    // set id (data/shard.h) derives from it, so the same input gives the same
    // bytes (any thread count, any run), and different inputs different ids.
    uint64_t hash() const { return hash_; }
    static std::string shard_name(const std::string& prefix, size_t i) {
        char num[16];
        std::snprintf(num, sizeof num, "%06zu", i);
        return prefix + num + ".bin";
    }

private:
    void append_one(int32_t t) {
        buf_.push_back(t);
        if (buf_.size() == n_) flush();
    }
    void flush() {
        std::string path = shard_name(prefix_, written_.size());
        write_shard_tracked(path, buf_, vocab_);
        written_.push_back(path);
        for (int32_t t : buf_) hash_ = (hash_ ^ uint64_t(uint32_t(t))) * 0x100000001B3ull;
        hash_ = (hash_ ^ buf_.size()) * 0x9E3779B97F4A7C15ull;  // shard boundaries count too
        buf_.clear();
    }
    std::string prefix_;
    size_t n_;
    int vocab_;
    std::vector<std::string>& written_;
    std::vector<int32_t> buf_;
    uint64_t hash_ = 0xCBF29CE484222325ull;
};

std::string human(double x) {
    char b[32];
    if (x >= 1e9) std::snprintf(b, sizeof b, "%.2fG", x / 1e9);
    else if (x >= 1e6) std::snprintf(b, sizeof b, "%.2fM", x / 1e6);
    else if (x >= 1e4) std::snprintf(b, sizeof b, "%.1fk", x / 1e3);
    else std::snprintf(b, sizeof b, "%.0f", x);
    return b;
}

void fsync_dir(const fs::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// The end of a run: every staged shard gets the set words of its header (the
// run's set id, a hash of its tokens; its split, index and the split's count; see
// data/shard.h), then all are renamed into the output directory, replacing an
// earlier run's shards of the same names. SIGINT and SIGTERM wait until this is
// done; only a SIGKILL in the middle leaves a mix, and readers refuse that by
// the set words (check_shard_sets).
void finalize(const fs::path& out, uint64_t id, std::initializer_list<std::pair<std::vector<std::string>*, std::vector<std::string>*>> splits) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    if (id == 0) id = 1;  // 0 means "no set"
    int32_t split = 0;
    for (const auto& [staged, final] : splits) {
        for (size_t i = 0; i < staged->size(); i++) {
            const std::string& path = (*staged)[i];
            const int32_t words[6] = {kShardSetMark, int32_t(uint32_t(id)), int32_t(uint32_t(id >> 32)), split, int32_t(i), int32_t(staged->size())};
            const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
            const bool ok = fd >= 0 && ::pwrite(fd, words, sizeof words, 3 * sizeof(int32_t)) == ssize_t(sizeof words) && ::fsync(fd) == 0;
            const int err = errno;
            if (fd >= 0) ::close(fd);
            if (!ok) run_failed("shard '" + path + "': cannot write its header: " + std::strerror(err));
        }
        split++;
    }
    for (const auto& [staged, final] : splits)
        for (const auto& path : *staged) {
            const fs::path to = out / fs::path(path).filename();
            if (::rename(path.c_str(), to.c_str()) != 0)
                run_failed("cannot move '" + path + "' to '" + to.string() + "': " + std::strerror(errno));
            final->push_back(to.string());
        }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// Removes `dir/<prefix>NNNNNN.bin` beyond `keep` and any `<prefix>*.bin.tmp.*`.
void remove_leftovers(const fs::path& dir, const std::string& prefix_leaf, size_t keep, bool stale_shards,
                      std::vector<std::string>& removed) {
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::string leaf = it->path().filename().string();
        if (!leaf.starts_with(prefix_leaf)) continue;
        std::string rest = leaf.substr(prefix_leaf.size());
        bool tmp = rest.find(".bin.tmp.") != std::string::npos;
        bool shard = rest.size() == 10 && rest.ends_with(".bin") &&
                     std::all_of(rest.begin(), rest.begin() + 6, [](char c) { return c >= '0' && c <= '9'; });
        if (shard && (!stale_shards || std::stoul(rest.substr(0, 6)) < keep)) continue;
        if (!shard && !tmp) continue;
        std::error_code ec2;
        if (fs::remove(it->path(), ec2)) removed.push_back(it->path().string());
    }
}

}  // namespace

PrepareStats prepare(const PrepareOptions& opt, std::ostream& log) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    if (opt.out_dir.empty()) bad_input("prepare: --out DIR is required");
    if (opt.inputs.empty()) bad_input("prepare: no INPUT given (files, directories or glob patterns)");
    if (opt.shard_tokens < 1 || opt.shard_tokens > INT32_MAX)
        bad_input("--shard-tokens must be in [1, " + std::to_string(INT32_MAX) + "] (got " +
                  std::to_string(opt.shard_tokens) + ")");
    if (opt.val_every < 0) bad_input("--val-every must be >= 0 (got " + std::to_string(opt.val_every) + ")");
    if (opt.name.empty() || opt.name.find('/') != std::string::npos)
        bad_input("--name must be a non-empty file-name prefix without '/' (got '" + opt.name + "')");
    if (opt.threads < 0 || opt.threads > kMaxThreads)
        bad_input("--threads must be in [0, " + std::to_string(kMaxThreads) + "] (got " + std::to_string(opt.threads) + "; 0 = all cores)");

    PrepareStats st;
    bool dirty = false;  // a progress line without its newline is on the terminal
    Problems problems{opt.stop_on_error, log};

    std::vector<std::string> input_errors;
    std::vector<SourceFile> files = expand_inputs(opt.inputs, fs::path(opt.out_dir), input_errors);
    if (files.empty()) {
        std::string msg = "prepare: no input file found";
        for (auto& e : input_errors) msg += "\n  " + e;
        bad_input(msg);
    }
    for (auto& e : input_errors) problems.report(e, st.skipped_files, dirty);

    Tokenizer tok = Tokenizer::load_default(opt.tokenizer_dir);
    const int vocab = tok.vocab_size();

    std::error_code ec;
    fs::create_directories(opt.out_dir, ec);
    if (ec || !fs::is_directory(opt.out_dir))
        bad_input("--out '" + opt.out_dir + "': cannot create the directory" + (ec ? ": " + ec.message() : ""));
    const std::string train_leaf = opt.name + "_train_", val_leaf = opt.name + "_val_";
    const fs::path out(opt.out_dir);
    std::vector<std::string> removed;
    remove_leftovers(out, train_leaf, 0, false, removed);
    remove_leftovers(out, val_leaf, 0, false, removed);
    // Shards are written to a staging directory beside the output and moved
    // in at the end (see finalize), so a killed run leaves DIR as it was. A
    // staging directory left by a killed run (its PID gone) is removed.
    const std::string staging_prefix = "." + opt.name + ".prepare.";
    for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string leaf = it->path().filename().string();
        if (!leaf.starts_with(staging_prefix)) continue;
        const long pid = std::atol(leaf.c_str() + staging_prefix.size());
        if (pid > 0 && !process_alive(pid_t(pid))) {
            std::error_code ec2;
            fs::remove_all(it->path(), ec2);
            removed.push_back(it->path().string());
        }
    }
    const fs::path staging = out / (staging_prefix + std::to_string(::getpid()));
    fs::remove_all(staging, ec);
    if (!fs::create_directory(staging, ec) || ec)
        run_failed("--out '" + opt.out_dir + "': cannot create the staging directory '" + staging.string() + "'" + (ec ? ": " + ec.message() : ""));
    struct StagingGuard {  // a failed run (an exception) removes its staging directory
        fs::path dir;
        ~StagingGuard() {
            std::error_code e;
            if (!dir.empty()) fs::remove_all(dir, e);
        }
    } staging_guard{staging};

    const int threads = opt.threads > 0 ? opt.threads : int(std::max(1u, std::thread::hardware_concurrency()));
    // Enough documents per batch to keep every thread busy with a dynamic
    // schedule; small enough that three batches in flight stay a few tens of MB.
    const size_t batch_bytes = std::clamp<size_t>(size_t(threads) * (2u << 20), 4u << 20, 64u << 20);

    SignalGuard signals;
    std::vector<std::string> staged_train, staged_val;
    SplitWriter train((staging / train_leaf).string(), opt.shard_tokens, vocab, staged_train);
    SplitWriter val((staging / val_leaf).string(), opt.shard_tokens, vocab, staged_val);

    BatchQueue queue(2);
    Reader reader(files, batch_bytes, queue);
    std::thread reader_thread([&] { reader.run(); });
    struct Join {
        BatchQueue& q;
        std::thread& t;
        ~Join() {
            q.cancel();
            if (t.joinable()) t.join();
        }
    } join{queue, reader_thread};

    // Redrawn in place on a terminal; GPT_PROGRESS=lines / redraw decide, as for gpt train.
    const char* progress_mode = std::getenv("GPT_PROGRESS");
    const char* term = std::getenv("TERM");
    const bool tty = progress_mode && *progress_mode ? std::string(progress_mode) == "redraw"
                                                     : isatty(2) && !(term && std::string(term) == "dumb");
    auto last_progress = clock::now();
    auto progress = [&](bool final) {
        if (opt.quiet) return;
        auto now = clock::now();
        double dt = std::chrono::duration<double>(now - last_progress).count();
        if (!final && dt < (tty ? 0.25 : 2.0)) return;
        if (final && !tty) return;
        last_progress = now;
        double s = std::max(1e-9, std::chrono::duration<double>(now - t0).count());
        uint64_t tokens = st.tokens_train + st.tokens_val;
        char line[256];
        std::snprintf(line, sizeof line,
                      "prepare: %.1f MB read, %.2f MB/s, %s tokens/s, %s documents, %zu shards written",
                      st.input_bytes / 1e6, st.input_bytes / 1e6 / s, human(tokens / s).c_str(),
                      human(double(st.docs_train + st.docs_val)).c_str(),
                      st.train_shards.size() + st.val_shards.size());
        if (tty) {
            log << "\r" << line << "\x1b[K" << std::flush;
            dirty = true;
        } else {
            log << line << "\n" << std::flush;
        }
    };

    std::vector<ItemResult> results;
    std::vector<std::string> texts(static_cast<size_t>(threads));  // per-thread JSON unescape buffers
    const std::string_view field(opt.text_field);
    while (std::optional<Batch> b = queue.pop()) {
        const size_t n = b->items.size();
        results.assign(n, ItemResult{});
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (size_t i = 0; i < n; i++) {
            const Item& it = b->items[i];
            ItemResult& r = results[i];
            std::string_view raw(b->buf.data() + it.off, it.len);
            try {
                if (it.kind == ItemKind::Error) {
                    r.error = std::string(raw);
                } else if (it.kind == ItemKind::Text) {
                    r.text_bytes = raw.size();
                    r.tokens = tok.encode(raw);
                } else {
                    std::string& t = texts[size_t(omp_get_thread_num())];
                    std::string err = json_string_field(raw, field, t);
                    if (!err.empty()) {
                        r.error = files[it.file].path + ":" + std::to_string(it.line) + ": " + err;
                    } else {
                        r.text_bytes = t.size();
                        r.tokens = tok.encode(t);
                    }
                }
            } catch (const std::exception& e) {
                r.error = files[it.file].path + (it.line ? ":" + std::to_string(it.line) : "") + ": " + e.what();
            }
        }
        for (size_t i = 0; i < n; i++) {
            ItemResult& r = results[i];
            const Item& it = b->items[i];
            if (!r.error.empty()) {
                problems.report(r.error, it.kind == ItemKind::JsonLine ? st.skipped_lines : st.skipped_files, dirty);
                continue;
            }
            uint64_t doc = st.docs_train + st.docs_val + 1;
            bool to_val = opt.val_every > 0 && doc % uint64_t(opt.val_every) == 0;
            (to_val ? val : train).add(r.tokens);
            (to_val ? st.docs_val : st.docs_train)++;
            (to_val ? st.tokens_val : st.tokens_train) += r.tokens.size() + 1;
            st.text_bytes += r.text_bytes;
            std::vector<int32_t>().swap(r.tokens);
        }
        st.input_bytes += b->input_bytes;
        st.files += b->files_done;
        progress(false);
    }
    if (st.docs_train + st.docs_val == 0)
        bad_input("prepare: no document in the input (" + std::to_string(st.skipped_lines) + " lines and " +
                  std::to_string(st.skipped_files) + " files skipped)");
    train.finish();
    val.finish();
    finalize(out, train.hash() * 0x9E3779B97F4A7C15ull ^ val.hash(), {{&staged_train, &st.train_shards}, {&staged_val, &st.val_shards}});
    remove_leftovers(out, train_leaf, st.train_shards.size(), true, removed);
    remove_leftovers(out, val_leaf, st.val_shards.size(), true, removed);
    fs::remove(staging, ec);
    staging_guard.dir.clear();
    fsync_dir(out);
    progress(true);
    if (dirty) log << "\n";
    for (auto& r : removed) log << "gpt data prepare: removed '" << r << "' (left by an earlier run)\n";
    st.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    return st;
}

// ---------------------------------------------------------------------------
// CLI

namespace {

const char* kPrepareUsage =
    "usage: gpt data prepare --out DIR INPUT... [--tokenizer DIR] [--name NAME] [--shard-tokens N]\n"
    "                        [--val-every K] [--text-field F] [--on-error skip|stop] [--threads N] [--quiet]\n"
    "\n"
    "Tokenizes raw text with GPT-2's BPE into llm.c token shards, like llm.c's\n"
    "fineweb.py: each document is <|endoftext|> followed by its tokens.\n"
    "\n"
    "INPUT is a file, a directory (recursed, files in sorted order, hidden ones\n"
    "skipped) or a glob pattern. .jsonl / .json files hold one JSON object per\n"
    "line with the document in field F; any other file is one document.\n"
    "\n"
    "  --out DIR          output directory (created): DIR/NAME_train_000000.bin ...,\n"
    "                     DIR/NAME_val_000000.bin ...\n"
    "  --tokenizer DIR    encoder.json + vocab.bpe (default $GPT_TOKENIZER_DIR, else the built-in GPT-2 files)\n"
    "  --name NAME        shard name prefix (default data)\n"
    "  --shard-tokens N   tokens per shard; documents span shards (default 100000000)\n"
    "  --val-every K      document i (1-based) goes to val when i % K == 0; 0 = no val (default 20)\n"
    "  --text-field F     JSON field holding the text (default text)\n"
    "  --on-error MODE    skip: report bad lines/files and go on (default); stop: exit 2 at the first\n"
    "  --threads N        tokenizer threads, 0 = all cores (default 0); the output does not depend on N\n"
    "  --quiet            no progress line\n";

int64_t int_flag(const std::string& flag, const std::string& v) {
    int64_t x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size()) bad_input(flag + ": '" + v + "' is not an integer");
    return x;
}

std::string with_commas(uint64_t x) {
    const std::string d = std::to_string(x);
    std::string s;
    for (size_t i = 0; i < d.size(); i++) {
        if (i > 0 && (d.size() - i) % 3 == 0) s += ',';
        s += d[i];
    }
    return s;
}

std::string shard_range(const std::vector<std::string>& v) {
    if (v.empty()) return "none";
    std::string first = fs::path(v.front()).filename().string();
    if (v.size() == 1) return first + " (1)";
    return first + " .. " + fs::path(v.back()).filename().string() + " (" + std::to_string(v.size()) + ")";
}

}  // namespace

int prepare_main(const std::vector<std::string>& args) {
    PrepareOptions opt;
    const std::vector<std::string> valued = {"--out",      "--tokenizer", "--name",    "--shard-tokens",
                                             "--val-every", "--text-field", "--on-error", "--threads"};
    for (size_t i = 1; i < args.size(); i++) {
        const std::string& a = args[i];
        if (a == "--help" || a == "-h") {
            std::cout << kPrepareUsage;
            return 0;
        }
        if (a == "--quiet") {
            opt.quiet = true;
            continue;
        }
        if (a.size() > 1 && a[0] == '-') {
            std::string name = a, value;
            auto eq = a.find('=');
            if (eq != std::string::npos) {
                name = a.substr(0, eq);
                value = a.substr(eq + 1);
            }
            if (std::find(valued.begin(), valued.end(), name) == valued.end())
                bad_input("prepare: unknown option '" + name + "' (see 'gpt data prepare --help')");
            if (eq == std::string::npos) {
                if (i + 1 >= args.size()) bad_input("prepare: " + name + " needs a value");
                value = args[++i];
            }
            if (name == "--out") opt.out_dir = value;
            else if (name == "--tokenizer") opt.tokenizer_dir = value;
            else if (name == "--name") opt.name = value;
            else if (name == "--shard-tokens") opt.shard_tokens = int_flag(name, value);
            else if (name == "--val-every") opt.val_every = int_flag(name, value);
            else if (name == "--text-field") opt.text_field = value;
            else if (name == "--threads") opt.threads = int(std::clamp<int64_t>(int_flag(name, value), -1, int64_t(kMaxThreads) + 1));
            else if (name == "--on-error") {
                if (value != "skip" && value != "stop")
                    bad_input("--on-error must be skip or stop (got '" + value + "')");
                opt.stop_on_error = value == "stop";
            }
            continue;
        }
        opt.inputs.push_back(a);
    }
    if (opt.out_dir.empty()) bad_input(std::string("prepare: --out DIR is required\n") + kPrepareUsage);
    if (opt.inputs.empty()) bad_input(std::string("prepare: no INPUT given\n") + kPrepareUsage);

    PrepareStats s = prepare(opt, std::cerr);
    const uint64_t docs = s.docs_train + s.docs_val, tokens = s.tokens_train + s.tokens_val;
    const double secs = std::max(s.seconds, 1e-9);
    std::printf("prepared %s documents (train %s, val %s) from %s files in %.2f s\n", with_commas(docs).c_str(),
                with_commas(s.docs_train).c_str(), with_commas(s.docs_val).c_str(), with_commas(s.files).c_str(),
                s.seconds);
    std::printf("  tokens   %s (train %s, val %s)\n", with_commas(tokens).c_str(),
                with_commas(s.tokens_train).c_str(), with_commas(s.tokens_val).c_str());
    std::printf("  bytes    %s of text, %s read, %.3f bytes/token\n", with_commas(s.text_bytes).c_str(),
                with_commas(s.input_bytes).c_str(), tokens ? double(s.text_bytes) / double(tokens) : 0.0);
    std::printf("  speed    %.2f MB/s read, %.0f tokens/s\n", s.input_bytes / 1e6 / secs, tokens / secs);
    std::printf("  shards   train %s, val %s in '%s'\n", shard_range(s.train_shards).c_str(),
                shard_range(s.val_shards).c_str(), opt.out_dir.c_str());
    std::printf("  skipped  %s lines, %s files\n", with_commas(s.skipped_lines).c_str(),
                with_commas(s.skipped_files).c_str());
    if (s.val_shards.empty() && opt.val_every > 0)
        std::fprintf(stderr, "gpt data prepare: warning: no val documents (fewer than --val-every %lld documents)\n",
                     (long long)opt.val_every);
    return 0;
}

}  // namespace gpt
