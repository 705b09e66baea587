#include "train/hellaswag.h"

#include <algorithm>
#include <fstream>

#include "data/json.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "model/gpt2.h"
#include "train/dist.h"

namespace gpt {

std::vector<HellaswagExample> load_hellaswag(const std::string& path, const Tokenizer& tok) {
    std::ifstream f(path, std::ios::binary);
    if (!f) bad_input("HellaSwag file '" + path + "': cannot open");
    std::vector<HellaswagExample> out;
    std::string line;
    for (int64_t no = 1; std::getline(f, line); no++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        auto bad = [&](const std::string& what) { bad_input("HellaSwag file '" + path + "', line " + std::to_string(no) + ": " + what); };
        Json j;
        try {
            j = parse_json(line);
        } catch (const std::runtime_error& e) {
            bad(e.what());
        }
        const Json* ctx = j.find("ctx");
        const Json* endings = j.find("endings");
        const Json* label = j.find("label");
        if (!ctx || !ctx->is_string()) bad("no \"ctx\" string");
        if (!endings || !endings->is_array() || endings->arr.size() < 2) bad("\"endings\" must be an array of at least two strings");
        // The published file has integer labels; some copies carry them as strings.
        double lv = -1;
        if (label && label->is_number()) lv = label->num;
        else if (label && label->is_string() && !label->str.empty() && label->str.find_first_not_of("0123456789") == std::string::npos)
            lv = std::stod(label->str);
        if (lv < 0 || lv != double(int64_t(lv)) || lv >= double(endings->arr.size()))
            bad("\"label\" must be the index of one of the " + std::to_string(endings->arr.size()) + " endings");
        HellaswagExample ex;
        ex.ctx = tok.encode(ctx->str);
        ex.label = int(lv);
        for (const Json& e : endings->arr) {
            if (!e.is_string()) bad("every ending must be a string");
            ex.endings.push_back(tok.encode(" " + e.str));  // the space, as GPT-2's tokenizer sees a continuation: never empty
        }
        out.push_back(std::move(ex));
    }
    if (out.empty()) bad_input("HellaSwag file '" + path + "': no examples");
    return out;
}

namespace {

// One row to score: context + one ending, already cut to at most T + 1 tokens.
struct Row {
    std::vector<int32_t> tokens;
    size_t ending_start;  // index in tokens of the first ending token (>= 1)
};

Row make_row(const HellaswagExample& ex, size_t e, int T, bool& truncated) {
    Row r;
    r.tokens = ex.ctx;
    r.tokens.insert(r.tokens.end(), ex.endings[e].begin(), ex.endings[e].end());
    r.ending_start = ex.ctx.size();
    const size_t cap = size_t(T) + 1;
    truncated = r.tokens.size() > cap;
    if (truncated) {
        // Keep the end: the ending and as much context as fits (at least one
        // token before the ending, so its first token is still predicted).
        const size_t cut = r.tokens.size() - cap;
        r.tokens.erase(r.tokens.begin(), r.tokens.begin() + long(cut));
        r.ending_start = r.ending_start > cut ? r.ending_start - cut : 1;
    }
    if (r.ending_start == 0) r.ending_start = 1;  // an empty context: the first token cannot be scored
    return r;
}

}  // namespace

HellaswagResult eval_hellaswag(GPT2& model, const std::vector<HellaswagExample>& examples, int64_t limit, Communicator* comm,
                               std::vector<EndingScores>* scores_out) {
    const int B = model.B(), T = model.T();
    const int rank = comm ? comm->rank() : 0, world = comm ? comm->world() : 1;
    const int64_t n = limit > 0 ? std::min<int64_t>(limit, int64_t(examples.size())) : int64_t(examples.size());
    HellaswagResult res;

    // This rank's rows, in order; each ending's loss sum and count land in its example's scores.
    struct Slot {
        size_t example, ending;
    };
    std::vector<size_t> mine;
    for (int64_t i = rank; i < n; i += world) mine.push_back(size_t(i));
    std::vector<EndingScores> scores(mine.size());
    std::vector<Slot> slots;
    for (size_t k = 0; k < mine.size(); k++) {
        const size_t ne = examples[mine[k]].endings.size();
        scores[k].sum.assign(ne, 0.0);
        scores[k].mean.assign(ne, 0.0);
        for (size_t e = 0; e < ne; e++) slots.push_back({k, e});
    }

    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    for (size_t first = 0; first < slots.size(); first += size_t(B)) {
        const size_t count = std::min(slots.size() - first, size_t(B));
        std::fill(x.begin(), x.end(), 0);
        std::fill(y.begin(), y.end(), 0);
        std::vector<Row> rows(count);
        for (size_t b = 0; b < count; b++) {
            const Slot& s = slots[first + b];
            bool cut = false;
            rows[b] = make_row(examples[mine[s.example]], s.ending, T, cut);
            res.truncated += cut ? 1 : 0;
            const auto& t = rows[b].tokens;
            for (size_t p = 0; p + 1 < t.size(); p++) {
                x[b * size_t(T) + p] = t[p];
                y[b * size_t(T) + p] = t[p + 1];
            }
        }
        model.forward(x.data(), y.data());
        const std::vector<double> losses = model.losses();  // (B,T): position p predicts token p + 1
        for (size_t b = 0; b < count; b++) {
            const Slot& s = slots[first + b];
            const Row& r = rows[b];
            double sum = 0;
            for (size_t j = r.ending_start; j < r.tokens.size(); j++) sum += losses[b * size_t(T) + j - 1];
            scores[s.example].sum[s.ending] = sum;
            scores[s.example].mean[s.ending] = sum / double(r.tokens.size() - r.ending_start);
        }
    }

    for (size_t k = 0; k < mine.size(); k++) {
        const auto& sc = scores[k];
        const int label = examples[mine[k]].label;
        // std::min_element returns the first of equal values, as torch's argmin does.
        const long pred = std::min_element(sc.sum.begin(), sc.sum.end()) - sc.sum.begin();
        const long pred_norm = std::min_element(sc.mean.begin(), sc.mean.end()) - sc.mean.begin();
        res.total++;
        res.correct += pred == label ? 1 : 0;
        res.correct_norm += pred_norm == label ? 1 : 0;
    }
    if (comm && world > 1) {
        res.total = int64_t(comm->all_reduce_sum(double(res.total)));
        res.correct = int64_t(comm->all_reduce_sum(double(res.correct)));
        res.correct_norm = int64_t(comm->all_reduce_sum(double(res.correct_norm)));
        res.truncated = int64_t(comm->all_reduce_sum(double(res.truncated)));
    }
    if (scores_out) *scores_out = std::move(scores);
    return res;
}

}  // namespace gpt
