// User YAML in, bounded (see train/yaml_input.h).
#include "train/yaml_input.h"

#include <yaml-cpp/eventhandler.h>

#include <sstream>

#include "kernels/error.h"

namespace gpt {

namespace {

// Reads a document's events and keeps where its content starts: its first
// node, or the document itself when it has none.
struct DocumentStart : YAML::EventHandler {
    YAML::Mark start = YAML::Mark::null_mark(), node = YAML::Mark::null_mark();
    YAML::Mark where() const { return node.is_null() ? start : node; }
    void first_node(const YAML::Mark& m) {
        if (node.is_null()) node = m;
    }
    void OnDocumentStart(const YAML::Mark& m) override { start = m; }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& m, YAML::anchor_t) override { first_node(m); }
    void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { first_node(m); }
    void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string&) override { first_node(m); }
    void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
        first_node(m);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
        first_node(m);
    }
    void OnMapEnd() override {}
};

}  // namespace

YamlDocument load_yaml_document(const std::string& text, const std::string& origin) {
    refuse_yaml_cpp_hang(text, origin);
    YamlDocument doc;
    // YAML::Load asks for one document only: it cannot loop on documents.
    doc.root = YAML::Load(text);
    // Then one more, from a parser of our own, and never a third.
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentStart first, second;
    if (parser.HandleNextDocument(first) && parser.HandleNextDocument(second)) {
        doc.has_second = true;
        doc.second = second.where();
    }
    return doc;
}

void refuse_yaml_cpp_hang(const std::string& text, const std::string& origin) {
    const size_t n = text.size();
    size_t i = 0;
    auto at_line_start = [&](size_t k) { return k == 0 || text[k - 1] == '\n'; };
    auto marker = [&](size_t k) {  // '---' or '...' starting a line, then a blank or the end
        if (!at_line_start(k) || k + 3 > n) return false;
        const std::string m = text.substr(k, 3);
        return (m == "---" || m == "...") && (k + 3 == n || text[k + 3] == ' ' || text[k + 3] == '\t' || text[k + 3] == '\n' || text[k + 3] == '\r');
    };
    // Blanks, line breaks, comments, directives and document markers.
    auto skip_gaps = [&]() {
        for (;;) {
            while (i < n && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) i++;
            if (i < n && (text[i] == '#' || (text[i] == '%' && at_line_start(i)))) {
                while (i < n && text[i] != '\n') i++;
                continue;
            }
            if (i < n && marker(i)) {
                i += 3;
                continue;
            }
            return;
        }
    };
    auto skip_quoted = [&]() {  // at a quote; false when it is not closed
        const char q = text[i++];
        while (i < n) {
            if (q == '"' && text[i] == '\\') i += 2;
            else if (text[i] == q && q == '\'' && i + 1 < n && text[i + 1] == '\'') i += 2;
            else if (text[i++] == q) return true;
        }
        return false;
    };
    for (;;) {
        skip_gaps();
        if (i >= n) return;
        // The root's properties: an anchor or a tag.
        while (i < n && (text[i] == '&' || text[i] == '!')) {
            while (i < n && text[i] != ' ' && text[i] != '\t' && text[i] != '\n') i++;
            skip_gaps();
        }
        if (i >= n) return;
        auto refuse = [&](const std::string& what) {
            int line = 1, col = 1;
            for (size_t k = 0; k < i; k++) {
                if (text[k] == '\n') line++, col = 1;
                else col++;
            }
            bad_input(origin + ":" + std::to_string(line) + ":" + std::to_string(col) + ": YAML syntax error: " + what);
        };
        if (text[i] == ',') refuse("a document cannot start with ','");
        bool flow_root = false;
        if (text[i] == '"' || text[i] == '\'') {
            if (!skip_quoted()) return;  // yaml-cpp reports it
            flow_root = true;
        } else if (text[i] == '{' || text[i] == '[') {
            int depth = 0;
            while (i < n) {
                const char c = text[i];
                if (c == '"' || c == '\'') {
                    if (!skip_quoted()) return;
                    continue;
                }
                if (c == '#' && i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\n')) {
                    while (i < n && text[i] != '\n') i++;
                    continue;
                }
                i++;
                if (c == '{' || c == '[') depth++;
                else if ((c == '}' || c == ']') && --depth == 0) break;
            }
            if (depth != 0) return;  // unclosed: yaml-cpp reports it
            flow_root = true;
        }
        if (flow_root) {
            skip_gaps();
            if (i < n && text[i] == ',') refuse("a ',' after the document's top-level flow collection or quoted scalar (outside any brackets)");
        }
        // The rest of this document is yaml-cpp's to judge: on to the next '---'.
        while (i < n && !(at_line_start(i) && marker(i) && text.compare(i, 3, "---") == 0)) i++;
        if (i >= n) return;
    }
}

}  // namespace gpt
