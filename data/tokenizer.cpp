// GPT-2's byte-level BPE tokenizer (see tokenizer.h).
//
// encode(text), as GPT-2's encoder.py does it:
//   1. Split text into pieces with GPT-2's regex (PCRE2, UTF + UCP, JIT).
//   2. Each piece's bytes start as one token each (the 256 single-byte tokens).
//   3. Merge adjacent pairs by rank (vocab.bpe order) until no pair has a rank.
// Tokens are handled as raw byte strings throughout: GPT-2's printable byte
// alphabet (byte_to_unicode) only matters when reading the two files, whose
// token strings are written in it.
//
// Invalid UTF-8. GPT-2's Python encoder and the JavaScript reference take
// Unicode strings, so neither can be given invalid UTF-8; we define it here.
// PCRE2_MATCH_INVALID_UTF makes the regex treat an invalid byte as matching no
// pattern item (not \s, \p{L}, \p{N}, nor [^\s\p{L}\p{N}]), so pieces stop at
// it and a lookahead (?!\S) succeeds before it. Every byte that no match covers
// becomes a piece of its own, i.e. its single-byte token. Valid stretches are
// tokenized exactly as if they were separate strings cut at the invalid bytes,
// and since every byte lands in some piece, decode(encode(x)) == x for any
// byte string x.
//
// Regex classes. \s, \p{L} and \p{N} come from PCRE2's Unicode tables (UCP).
// GPT-2's Python `regex` module and JavaScript disagree with each other and
// with PCRE2 on a few rare code points (e.g. U+0085 and U+FEFF for \s) and on
// characters newer than the library's Unicode version; ordinary text of any
// script tokenizes identically (tests/data/tokenizer_vectors.jsonl).
//
// Merging. For a piece of n bytes, GPT-2 repeatedly takes the pair of lowest
// rank and merges all its non-overlapping occurrences left to right. Short
// pieces (the common case) run exactly that loop. Long pieces use a heap of
// (rank, position) over a linked list, O(n log n) instead of O(n^2); that gives
// the same result when every merge ranks after the merges that create its two
// parts, which load() checks (true for GPT-2's vocab.bpe). Results of pieces up
// to kCacheMaxLen bytes are cached per thread, so encode() takes no lock.
#include "data/tokenizer.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "data/files.h"
#include "kernels/error.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace gpt {

namespace {

// GPT-2's pre-tokenisation pattern, verbatim.
constexpr const char* kPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kEndOfTextText = "<|endoftext|>";
constexpr size_t kExactMaxLen = 48;   // pieces up to this many bytes use GPT-2's loop verbatim
constexpr size_t kCacheMaxLen = 64;   // longer pieces are rare and not cached
constexpr size_t kCacheSlots = 1 << 15;

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the
// other 68 to U+0100 + n in byte order.
std::vector<uint32_t> byte_to_unicode() {
    std::vector<uint32_t> cs(256, 0);
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cs[size_t(b)] = printable ? uint32_t(b) : uint32_t(256 + n++);
    }
    return cs;
}

uint64_t hash_bytes(const char* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        h = (h ^ w) * 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 32;
    return h;
}

std::string read_whole(const std::string& path) { return read_input(path, "tokenizer file", kTextFileLimit); }

// A parser for encoder.json: one flat JSON object of string -> non-negative
// integer. Strings come back as code points (what the byte alphabet needs).
struct JsonReader {
    const std::string& path;
    std::string_view s;
    size_t i = 0;

    [[noreturn]] void fail(const std::string& what) const {
        bad_input(path + ": malformed JSON at byte offset " + std::to_string(i) + ": " + what);
    }
    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
    }
    bool eat(char c) {
        ws();
        if (i < s.size() && s[i] == c) {
            i++;
            return true;
        }
        return false;
    }
    uint32_t hex4() {
        if (i + 4 > s.size()) fail("truncated \\u escape");
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            char c = s[i++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
            else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
            else fail("bad hex digit in \\u escape");
        }
        return v;
    }
    // Reads one UTF-8 code point of the raw file text.
    uint32_t utf8() {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + size_t(len) > s.size()) fail("invalid UTF-8");
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
        for (int k = 1; k < len; k++) {
            unsigned char d = (unsigned char)s[i + size_t(k)];
            if ((d >> 6) != 2) fail("invalid UTF-8");
            cp = (cp << 6) | (d & 0x3F);
        }
        i += size_t(len);
        return cp;
    }
    std::vector<uint32_t> string() {
        ws();
        if (i >= s.size() || s[i] != '"') fail("expected a string");
        i++;
        std::vector<uint32_t> out;
        for (;;) {
            if (i >= s.size()) fail("unterminated string");
            char c = s[i];
            if (c == '"') {
                i++;
                return out;
            }
            if ((unsigned char)c < 0x20) fail("control character in string");
            if (c != '\\') {
                out.push_back(utf8());
                continue;
            }
            i++;
            if (i >= s.size()) fail("unterminated escape");
            char e = s[i++];
            switch (e) {
                case '"': out.push_back('"'); break;
                case '\\': out.push_back('\\'); break;
                case '/': out.push_back('/'); break;
                case 'b': out.push_back('\b'); break;
                case 'f': out.push_back('\f'); break;
                case 'n': out.push_back('\n'); break;
                case 'r': out.push_back('\r'); break;
                case 't': out.push_back('\t'); break;
                case 'u': {
                    uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00) {
                        if (i + 2 > s.size() || s[i] != '\\' || s[i + 1] != 'u') fail("unpaired surrogate");
                        i += 2;
                        uint32_t lo = hex4();
                        if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        fail("unpaired low surrogate");
                    }
                    out.push_back(cp);
                    break;
                }
                default: i--; fail(std::string("unknown escape \\") + e);
            }
        }
    }
    int64_t integer() {
        ws();
        size_t start = i;
        int64_t v = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            v = v * 10 + (s[i] - '0');
            if (v > INT32_MAX) fail("token id too large");
            i++;
        }
        if (i == start) fail("expected a non-negative integer token id");
        return v;
    }
};

// (left id, right id) -> (rank, merged id), open addressing.
struct MergeTable {
    struct Slot {
        uint64_t key = ~0ull;
        int32_t rank = -1;
        int32_t merged = -1;
    };
    std::vector<Slot> slots;
    uint64_t mask = 0;
    int shift = 0;

    static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
    size_t home(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> shift); }

    void init(size_t n) {
        size_t cap = 16;
        shift = 60;
        while (cap < 2 * n + 16) {
            cap <<= 1;
            shift--;
        }
        slots.assign(cap, Slot{});
        mask = cap - 1;
    }
    // Later merges overwrite earlier ones, as dict(zip(merges, range(n))) does.
    void put(int32_t a, int32_t b, int32_t rank, int32_t merged) {
        uint64_t k = key(a, b);
        for (size_t h = home(k);; h = (h + 1) & mask) {
            if (slots[h].key == k || slots[h].key == ~0ull) {
                slots[h] = Slot{k, rank, merged};
                return;
            }
        }
    }
    const Slot* get(int32_t a, int32_t b) const {
        uint64_t k = key(a, b);
        for (size_t h = home(k);; h = (h + 1) & mask) {
            const Slot& s = slots[h];
            if (s.key == k) return &s;
            if (s.key == ~0ull) return nullptr;
        }
    }
};

std::atomic<uint64_t> g_next_tokenizer_id{1};

// Per-thread cache of piece -> token ids. Cleared wholesale when full: the
// frequent pieces come back within a few KB of text.
struct WordCache {
    struct Slot {
        uint64_t hash;
        uint32_t key_off;
        uint32_t key_len;  // 0: empty slot
        uint32_t ids_off;
        uint32_t ids_len;
    };
    uint64_t owner = 0;  // id of the Tokenizer the entries belong to
    std::vector<Slot> slots;
    std::string keys;
    std::vector<int32_t> ids;
    size_t used = 0;

    void reset(uint64_t who) {
        owner = who;
        slots.assign(kCacheSlots, Slot{0, 0, 0, 0, 0});
        keys.clear();
        ids.clear();
        used = 0;
    }
};

struct MatchData {
    pcre2_match_data* md = nullptr;
    pcre2_jit_stack* stack = nullptr;  // a bigger JIT stack, made on first need
    pcre2_match_context* ctx = nullptr;
    ~MatchData() {
        if (md) pcre2_match_data_free(md);
        if (ctx) pcre2_match_context_free(ctx);
        if (stack) pcre2_jit_stack_free(stack);
    }
};

}  // namespace

struct Tokenizer::Impl {
    uint64_t id = g_next_tokenizer_id++;
    std::vector<std::string> bytes_of;  // id -> raw bytes
    int32_t byte_token[256] = {};       // byte -> its single-byte token
    MergeTable merges;
    bool ranks_monotonic = true;        // see the file comment: enables the heap path
    pcre2_code* re = nullptr;

    ~Impl() {
        if (re) pcre2_code_free(re);
    }

    void compile_regex() {
        int err = 0;
        PCRE2_SIZE off = 0;
        re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            run_failed(std::string("tokenizer: cannot compile GPT-2's regex: ") + reinterpret_cast<char*>(msg));
        }
        // Without JIT (a PCRE2 built without it) pcre2_match still works, slower.
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    }

    // GPT-2's loop on w[0, len): take the lowest-ranked adjacent pair, merge all
    // its non-overlapping occurrences left to right, repeat. Returns the new length.
    size_t bpe_loop(int32_t* w, size_t len) const {
        while (len > 1) {
            int32_t best = INT32_MAX, merged = -1, first = -1, second = -1;
            for (size_t k = 0; k + 1 < len; k++) {
                const MergeTable::Slot* s = merges.get(w[k], w[k + 1]);
                if (s && s->rank < best) {
                    best = s->rank;
                    merged = s->merged;
                    first = w[k];
                    second = w[k + 1];
                }
            }
            if (merged < 0) break;
            size_t o = 0;
            for (size_t k = 0; k < len;) {
                if (k + 1 < len && w[k] == first && w[k + 1] == second) {
                    w[o++] = merged;
                    k += 2;
                } else {
                    w[o++] = w[k++];
                }
            }
            len = o;
        }
        return len;
    }

    void bpe_heap(const char* p, size_t n, std::vector<int32_t>& out) const {
        std::vector<int32_t> w(n), next(n), prev(n);
        for (size_t k = 0; k < n; k++) {
            w[k] = byte_token[(unsigned char)p[k]];
            next[k] = k + 1 < n ? int32_t(k + 1) : -1;
            prev[k] = int32_t(k) - 1;
        }
        struct Cand {
            int32_t rank, pos, left, right;
            bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
        };
        std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
        auto push = [&](int32_t a) {
            if (a < 0 || next[size_t(a)] < 0) return;
            const MergeTable::Slot* s = merges.get(w[size_t(a)], w[size_t(next[size_t(a)])]);
            if (s) heap.push({s->rank, a, w[size_t(a)], w[size_t(next[size_t(a)])]});
        };
        for (size_t k = 0; k + 1 < n; k++) push(int32_t(k));
        std::vector<char> alive(n, 1);
        while (!heap.empty()) {
            Cand c = heap.top();
            heap.pop();
            size_t a = size_t(c.pos);
            if (!alive[a] || next[a] < 0) continue;
            size_t b = size_t(next[a]);
            if (w[a] != c.left || w[b] != c.right) continue;  // stale: a neighbour merged since
            w[a] = merges.get(c.left, c.right)->merged;
            alive[b] = 0;
            next[a] = next[b];
            if (next[b] >= 0) prev[size_t(next[b])] = int32_t(a);
            push(prev[a]);
            push(int32_t(a));
        }
        for (int32_t k = 0; k >= 0; k = next[size_t(k)]) out.push_back(w[size_t(k)]);
    }

    void bpe(const char* p, size_t n, std::vector<int32_t>& out) const {
        if (n > kExactMaxLen && ranks_monotonic) {
            bpe_heap(p, n, out);
            return;
        }
        // Short pieces on the stack; long ones only when the heap cannot be used
        // (a vocab.bpe other than GPT-2's): exact, O(n^2).
        int32_t small[kExactMaxLen];
        std::vector<int32_t> big(n > kExactMaxLen ? n : 0);
        int32_t* w = n > kExactMaxLen ? big.data() : small;
        for (size_t k = 0; k < n; k++) w[k] = byte_token[(unsigned char)p[k]];
        out.insert(out.end(), w, w + bpe_loop(w, n));
    }

    void piece(const char* p, size_t n, std::vector<int32_t>& out) const {
        if (n == 1 || n > kCacheMaxLen) {
            bpe(p, n, out);
            return;
        }
        thread_local WordCache cache;
        if (cache.owner != id) cache.reset(id);
        uint64_t h = hash_bytes(p, n);
        size_t mask = kCacheSlots - 1;
        size_t k = size_t(h) & mask;
        for (;; k = (k + 1) & mask) {
            const WordCache::Slot& s = cache.slots[k];
            if (s.key_len == 0) break;
            if (s.hash == h && s.key_len == n && std::memcmp(cache.keys.data() + s.key_off, p, n) == 0) {
                out.insert(out.end(), cache.ids.begin() + s.ids_off, cache.ids.begin() + s.ids_off + s.ids_len);
                return;
            }
        }
        size_t before = out.size();
        bpe(p, n, out);
        if (cache.used * 2 >= kCacheSlots) {
            cache.reset(id);
            k = size_t(h) & mask;
        }
        WordCache::Slot& s = cache.slots[k];
        s = WordCache::Slot{h, uint32_t(cache.keys.size()), uint32_t(n), uint32_t(cache.ids.size()),
                            uint32_t(out.size() - before)};
        cache.keys.append(p, n);
        cache.ids.insert(cache.ids.end(), out.begin() + long(before), out.end());
        cache.used++;
    }

    // Splits text with the regex and BPE-encodes each piece (no special tokens).
    void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
        thread_local MatchData m;
        if (!m.md) m.md = pcre2_match_data_create(1, nullptr);
        auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
        size_t pos = 0, n = text.size();
        while (pos < n) {
            int rc = pcre2_jit_match(re, subject, n, pos, 0, m.md, nullptr);
            if (rc == PCRE2_ERROR_JIT_BADOPTION) rc = pcre2_match(re, subject, n, pos, 0, m.md, nullptr);
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
                // Only pathological inputs need more than the default 32 KiB.
                if (!m.ctx) {
                    m.stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr);
                    m.ctx = pcre2_match_context_create(nullptr);
                    pcre2_jit_stack_assign(m.ctx, nullptr, m.stack);
                }
                rc = pcre2_jit_match(re, subject, n, pos, 0, m.md, m.ctx);
            }
            size_t start = n, end = n;
            if (rc > 0) {
                PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
                start = ov[0];
                end = ov[1];
            } else if (rc != PCRE2_ERROR_NOMATCH) {
                // A matcher failure (resource limits) must not make encode fail:
                // this byte becomes its own piece and matching resumes after it.
                out.push_back(byte_token[(unsigned char)text[pos++]]);
                continue;
            }
            // Bytes no match covers are invalid UTF-8: one piece each.
            for (; pos < start; pos++) out.push_back(byte_token[(unsigned char)text[pos]]);
            if (start == n) break;
            piece(text.data() + start, end - start, out);
            pos = end;
        }
    }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::string Tokenizer::resolve_dir(const std::string& dir) {
    if (!dir.empty()) return dir;
    const char* env = std::getenv("GPT_TOKENIZER_DIR");
    return env && *env ? std::string(env) : std::string();
}

std::string Tokenizer::describe(const std::string& dir) {
    const std::string d = resolve_dir(dir);
    return d.empty() ? std::string("the built-in GPT-2 tokenizer") : "the GPT-2 tokenizer in '" + d + "'";
}

Tokenizer Tokenizer::load_default(const std::string& dir) {
    const std::string d = resolve_dir(dir);
    return d.empty() ? builtin() : load(d);
}

Tokenizer Tokenizer::builtin() {
    return parse("built-in encoder.json", embedded::gpt2_encoder_json(), "built-in vocab.bpe", embedded::gpt2_vocab_bpe());
}

Tokenizer Tokenizer::load(const std::string& dir) {
    const std::string enc_path = dir + "/encoder.json", bpe_path = dir + "/vocab.bpe";
    const std::string text = read_whole(enc_path);
    const std::string bpe = read_whole(bpe_path);
    return parse(enc_path, text, bpe_path, bpe);
}

Tokenizer Tokenizer::parse(const std::string& enc_path, std::string_view text, const std::string& bpe_path, std::string_view bpe) {
    auto impl = std::make_unique<Impl>();
    const std::vector<uint32_t> b2u = byte_to_unicode();
    std::unordered_map<uint32_t, unsigned char> u2b;
    for (int b = 0; b < 256; b++) u2b[b2u[size_t(b)]] = (unsigned char)b;

    // encoder.json: token (in the byte alphabet) -> id.
    std::unordered_map<std::string, int32_t> id_of;
    std::vector<std::string>& bytes_of = impl->bytes_of;
    {
        JsonReader j{enc_path, text};
        if (!j.eat('{')) j.fail("expected '{' (encoder.json is one object of token -> id)");
        if (!j.eat('}')) {
            do {
                size_t at = (j.ws(), j.i);
                std::vector<uint32_t> cps = j.string();
                std::string tok;
                for (uint32_t cp : cps) {
                    auto it = u2b.find(cp);
                    if (it == u2b.end()) {
                        char buf[16];
                        std::snprintf(buf, sizeof buf, "U+%04X", cp);
                        bad_input(enc_path + ": the token at byte offset " + std::to_string(at) + " has character " +
                                  buf + ", which is not in GPT-2's byte alphabet");
                    }
                    tok += char(it->second);
                }
                if (!j.eat(':')) j.fail("expected ':'");
                int64_t id = j.integer();
                // Ids are 0..n-1 and each entry takes at least 5 bytes ("x":0,):
                // a larger id cannot be valid, and would size the table by it.
                if (uint64_t(id) >= text.size() / 5 + 1)
                    j.fail("token id " + std::to_string(id) + " is larger than this file could number its tokens (ids must be 0..n-1)");
                if (!id_of.emplace(tok, int32_t(id)).second)
                    bad_input(enc_path + ": token at byte offset " + std::to_string(at) + " appears twice");
                if (size_t(id) >= bytes_of.size()) bytes_of.resize(size_t(id) + 1);
                if (!bytes_of[size_t(id)].empty())
                    bad_input(enc_path + ": id " + std::to_string(id) + " is given to two tokens");
                bytes_of[size_t(id)] = tok;
            } while (j.eat(','));
            if (!j.eat('}')) j.fail("expected ',' or '}'");
        }
        j.ws();
        if (j.i != text.size()) j.fail("trailing data after the object");
    }
    if (bytes_of.empty()) bad_input(enc_path + ": no tokens");
    for (size_t id = 0; id < bytes_of.size(); id++)
        if (bytes_of[id].empty())
            bad_input(enc_path + ": ids are not contiguous: no token has id " + std::to_string(id) + " (largest is " +
                      std::to_string(bytes_of.size() - 1) + ")");
    for (int b = 0; b < 256; b++) {
        auto it = id_of.find(std::string(1, char(b)));
        if (it == id_of.end()) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "0x%02X", b);
            bad_input(enc_path + ": no token for the single byte " + buf + " (every byte needs one)");
        }
        impl->byte_token[b] = it->second;
    }

    // vocab.bpe: "#version" comment, then one merge "a b" per line, by rank.
    struct Merge {
        int32_t a, b, merged;
    };
    std::vector<Merge> list;
    size_t pos = 0;
    for (long line_no = 1; pos < bpe.size(); line_no++) {
        size_t eol = bpe.find('\n', pos);
        if (eol == std::string::npos) eol = bpe.size();
        std::string_view line(bpe.data() + pos, eol - pos);
        pos = eol + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty() || (line_no == 1 && line[0] == '#')) continue;
        const std::string where = bpe_path + ":" + std::to_string(line_no) + ": ";
        size_t sp = line.find(' ');
        if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
            line.find(' ', sp + 1) != std::string_view::npos)
            bad_input(where + "expected a merge 'A B' (two tokens separated by one space), got '" + std::string(line) +
                      "'");
        auto to_bytes = [&](std::string_view part) {
            std::string cps(part);
            JsonReader r{bpe_path, cps};
            std::string raw;
            while (r.i < cps.size()) {
                uint32_t cp = 0;
                try {
                    cp = r.utf8();
                } catch (const Error&) {
                    bad_input(where + "invalid UTF-8");
                }
                auto it = u2b.find(cp);
                if (it == u2b.end()) bad_input(where + "'" + cps + "' has a character outside GPT-2's byte alphabet");
                raw += char(it->second);
            }
            return raw;
        };
        const std::string left(line.substr(0, sp)), right(line.substr(sp + 1));
        std::string a = to_bytes(left), b = to_bytes(right);
        auto ia = id_of.find(a), ib = id_of.find(b), im = id_of.find(a + b);
        if (ia == id_of.end() || ib == id_of.end())
            bad_input(where + "merge part '" + (ia == id_of.end() ? left : right) + "' is not in the vocabulary (" +
                      enc_path + ")");
        if (im == id_of.end())
            bad_input(where + "the merged token '" + left + right + "' is not in the vocabulary (" + enc_path + ")");
        list.push_back({ia->second, ib->second, im->second});
    }
    impl->merges.init(list.size());
    for (size_t r = 0; r < list.size(); r++) impl->merges.put(list[r].a, list[r].b, int32_t(r), list[r].merged);

    // The heap path's precondition: a merge ranks after every merge that creates
    // one of its parts (the rank that actually applies, after overwrites).
    std::vector<int32_t> created_at(bytes_of.size(), -1);
    for (size_t r = 0; r < list.size(); r++) {
        const MergeTable::Slot* s = impl->merges.get(list[r].a, list[r].b);
        if (s->rank == int32_t(r)) created_at[size_t(s->merged)] = std::max(created_at[size_t(s->merged)], int32_t(r));
    }
    for (size_t r = 0; r < list.size(); r++)
        if (created_at[size_t(list[r].a)] >= int32_t(r) || created_at[size_t(list[r].b)] >= int32_t(r))
            impl->ranks_monotonic = false;

    // The special token every caller uses by its GPT-2 id (documents are
    // separated by it, samples start from it): a vocabulary without it there
    // would make encode() return an id outside the vocabulary.
    if (auto eot = id_of.find(std::string(kEndOfTextText)); eot == id_of.end() || eot->second != kEndOfText)
        bad_input(enc_path + ": '<|endoftext|>' must be token " + std::to_string(kEndOfText) + " as in GPT-2's vocabulary (" +
                  (eot == id_of.end() ? std::string("it is missing") : "it is " + std::to_string(eot->second)) + ")");

    impl->compile_regex();
    return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 8);
    if (!allow_special) {
        impl_->encode_ordinary(text, out);
        return out;
    }
    // Each "<|endoftext|>" becomes one token; the text between is ordinary.
    for (;;) {
        size_t at = text.find(kEndOfTextText);
        impl_->encode_ordinary(text.substr(0, at), out);
        if (at == std::string_view::npos) break;
        out.push_back(kEndOfText);
        text.remove_prefix(at + kEndOfTextText.size());
    }
    return out;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || size_t(id) >= impl_->bytes_of.size())
        bad_input("token id " + std::to_string(id) + " is out of range [0, " + std::to_string(impl_->bytes_of.size()) +
                  ")");
    return impl_->bytes_of[size_t(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string out;
    for (int32_t id : ids) out += token_bytes(id);
    return out;
}

int Tokenizer::vocab_size() const { return int(impl_->bytes_of.size()); }

}  // namespace gpt
