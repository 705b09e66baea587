#include "data/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "train/config.h"

namespace gpt {

Json::Json(double v) {
    if (std::isfinite(v)) {
        type = Type::Number;
        num = v;
    }
}

const Json* Json::find(std::string_view key) const {
    if (type != Type::Object) return nullptr;
    for (const auto& [k, v] : obj)
        if (k == key) return &v;
    return nullptr;
}

Json& Json::set(const std::string& key, Json v) {
    if (type != Type::Object) *this = object();
    for (auto& [k, old] : obj)
        if (k == key) return old = std::move(v);
    obj.emplace_back(key, std::move(v));
    return obj.back().second;
}

double Json::number(std::string_view key, double def) const {
    const Json* j = find(key);
    return j && j->is_number() ? j->num : def;
}

std::string Json::string(std::string_view key, const std::string& def) const {
    const Json* j = find(key);
    return j && j->is_string() ? j->str : def;
}

bool Json::boolean(std::string_view key, bool def) const {
    const Json* j = find(key);
    return j && j->type == Type::Bool ? j->b : def;
}

std::string number_text(double v) {
    if (!std::isfinite(v)) return "null";
    if (v == std::floor(v) && std::fabs(v) < 1e15) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
        return buf;
    }
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round-trip form
    return std::string(buf, r.ptr);
}

std::string Json::scalar_text() const {
    switch (type) {
        case Type::String: return str;
        case Type::Number: return number_text(num);
        case Type::Bool: return b ? "true" : "false";
        default: return dump();
    }
}

namespace {

void dump_to(const Json& j, std::string& out) {
    switch (j.type) {
        case Json::Type::Null: out += "null"; break;
        case Json::Type::Bool: out += j.b ? "true" : "false"; break;
        case Json::Type::Number: out += number_text(j.num); break;
        case Json::Type::String: out += json_quote(j.str); break;
        case Json::Type::Array:
            out += '[';
            for (size_t i = 0; i < j.arr.size(); i++) {
                if (i) out += ',';
                dump_to(j.arr[i], out);
            }
            out += ']';
            break;
        case Json::Type::Object:
            out += '{';
            for (size_t i = 0; i < j.obj.size(); i++) {
                if (i) out += ',';
                out += json_quote(j.obj[i].first);
                out += ':';
                dump_to(j.obj[i].second, out);
            }
            out += '}';
            break;
    }
}

struct Parser {
    std::string_view s;
    size_t i = 0;
    bool reject_duplicates = false;

    [[noreturn]] void fail(const std::string& what) {
        throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i));
    }
    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    }
    bool eat(char c) {
        ws();
        if (i < s.size() && s[i] == c) {
            i++;
            return true;
        }
        return false;
    }
    void expect(char c) {
        if (!eat(c)) fail(std::string("expected '") + c + "'");
    }
    void utf8(uint32_t cp, std::string& out) {
        if (cp < 0x80) out += char(cp);
        else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) { out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
        else { out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F)); }
    }
    uint32_t hex4() {
        if (i + 4 > s.size()) fail("short \\u escape");
        uint32_t v = 0;
        for (int k = 0; k < 4; k++) {
            const char c = s[i++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= uint32_t(c - '0');
            else if (c >= 'a' && c <= 'f') v |= uint32_t(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= uint32_t(c - 'A' + 10);
            else fail("bad \\u escape");
        }
        return v;
    }
    std::string string_body() {
        std::string out;
        for (;;) {
            if (i >= s.size()) fail("unterminated string");
            const char c = s[i++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
            if (c != '\\') { out += c; continue; }
            if (i >= s.size()) fail("unterminated escape");
            const char e = s[i++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && i + 5 < s.size() && s[i] == '\\' && s[i + 1] == 'u') {
                        const size_t save = i;
                        i += 2;
                        const uint32_t lo = hex4();
                        if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        else i = save;  // a lone high surrogate; the next escape stands alone
                    }
                    // Lone surrogates cannot be UTF-8: U+FFFD, as a lenient decoder
                    // would (and as gpt data prepare reads them).
                    if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;
                    utf8(cp, out);
                    break;
                }
                default: fail("bad escape");
            }
        }
    }
    Json value(int depth) {
        if (depth > 200) fail("nesting too deep");
        ws();
        if (i >= s.size()) fail("unexpected end");
        const char c = s[i];
        if (c == '{') {
            i++;
            Json o = Json::object();
            if (eat('}')) return o;
            do {
                ws();
                if (i >= s.size() || s[i] != '"') fail("expected a key");
                i++;
                std::string k = string_body();
                if (reject_duplicates && o.find(k)) fail("duplicate key \"" + k + "\"");
                expect(':');
                o.set(k, value(depth + 1));
            } while (eat(','));
            expect('}');
            return o;
        }
        if (c == '[') {
            i++;
            Json a = Json::array();
            if (eat(']')) return a;
            do a.push(value(depth + 1));
            while (eat(','));
            expect(']');
            return a;
        }
        if (c == '"') {
            i++;
            return Json(string_body());
        }
        if (s.substr(i, 4) == "true") { i += 4; return Json(true); }
        if (s.substr(i, 5) == "false") { i += 5; return Json(false); }
        if (s.substr(i, 4) == "null") { i += 4; return Json(); }
        const size_t start = i;
        if (i < s.size() && (s[i] == '-' || s[i] == '+')) i++;
        while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.' || s[i] == 'e' || s[i] == 'E' || s[i] == '-' || s[i] == '+')) i++;
        if (start == i) fail("unexpected character");
        double v = 0;
        const auto r = std::from_chars(s.data() + start + (s[start] == '+'), s.data() + i, v);
        if (r.ec != std::errc() || r.ptr != s.data() + i) fail("bad number");
        Json j;
        j.type = Json::Type::Number;
        j.num = v;
        return j;
    }
};

}  // namespace

std::string Json::dump() const {
    std::string out;
    dump_to(*this, out);
    return out;
}

Json parse_json(std::string_view text, bool reject_duplicate_keys) {
    Parser p{text};
    p.reject_duplicates = reject_duplicate_keys;
    Json v = p.value(0);
    p.ws();
    if (p.i != text.size()) p.fail("trailing characters");
    return v;
}

}  // namespace gpt
