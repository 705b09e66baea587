// A small JSON value shared by the project: the search journal (JSONL), the trainer's
// log.jsonl, the proposer protocol and the autotune cache all go through it.
//
// Objects keep their insertion order, so records read the way they were
// written. Numbers are doubles (every number the search handles fits).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gpt {

struct Json {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool b = false;
    double num = 0;
    std::string str;
    std::vector<Json> arr;
    std::vector<std::pair<std::string, Json>> obj;

    Json() = default;
    Json(std::nullptr_t) {}
    Json(bool v) : type(Type::Bool), b(v) {}
    Json(int v) : type(Type::Number), num(v) {}
    Json(long v) : type(Type::Number), num(double(v)) {}
    Json(long long v) : type(Type::Number), num(double(v)) {}
    Json(double v);  // NaN and infinities become null: JSON has none
    Json(const char* s) : type(Type::String), str(s) {}
    Json(std::string s) : type(Type::String), str(std::move(s)) {}
    static Json array() { Json j; j.type = Type::Array; return j; }
    static Json object() { Json j; j.type = Type::Object; return j; }

    bool is_null() const { return type == Type::Null; }
    bool is_number() const { return type == Type::Number; }
    bool is_string() const { return type == Type::String; }
    bool is_object() const { return type == Type::Object; }
    bool is_array() const { return type == Type::Array; }

    // Object access: nullptr when absent (or not an object).
    const Json* find(std::string_view key) const;
    // Sets (replacing) a key of an object.
    Json& set(const std::string& key, Json v);
    void push(Json v) { arr.push_back(std::move(v)); }

    // Typed reads with defaults for absent or null members.
    double number(std::string_view key, double def = 0) const;
    std::string string(std::string_view key, const std::string& def = "") const;
    bool boolean(std::string_view key, bool def = false) const;

    // The value as text for a config override: strings as they are, numbers
    // in their shortest exact form, booleans as true/false.
    std::string scalar_text() const;

    std::string dump() const;  // compact, one line
};

// Parses one JSON text; throws std::runtime_error with the offset on bad input.
// A key repeated within one object keeps its last value, unless
// reject_duplicate_keys (formats where a repeat means a corrupt or forged file).
Json parse_json(std::string_view text, bool reject_duplicate_keys = false);

// Shortest decimal text that reads back as exactly v (integers without a point).
std::string number_text(double v);

}  // namespace gpt
