// HellaSwag as llm.c reports it (dev/data/hellaswag.py, "completion style").
//
// Each example of the published jsonl (ctx, endings, label) becomes one row
// per ending: tokens(ctx) + tokens(" " + ending), the two encoded separately.
// The model scores a row by its cross-entropy on the ending's tokens only (the
// prediction of each ending token from everything before it). Two accuracies:
//   acc       the ending with the lowest SUM of those losses is the answer
//   acc_norm  the ending with the lowest MEAN (sum / ending tokens) is the answer
// Ties go to the first ending, as torch's argmin does. llm.c's C trainer
// prints acc_norm during training; hellaswag.py prints both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gpt {

class GPT2;
class Communicator;
class Tokenizer;

struct HellaswagExample {
    std::vector<int32_t> ctx;                   // tokens of ctx
    std::vector<std::vector<int32_t>> endings;  // tokens of " " + ending, one per ending
    int label = 0;                              // index of the right ending
};

// Reads the jsonl (one example per line; blank lines skipped). Throws
// BadInput naming the file and line for a bad line, a missing ctx, fewer than
// two endings, or a label that is not one of them.
std::vector<HellaswagExample> load_hellaswag(const std::string& path, const Tokenizer& tok);

struct HellaswagResult {
    int64_t total = 0, correct = 0, correct_norm = 0;
    int64_t truncated = 0;  // rows longer than the model's T + 1, cut from the left (context first)
    double acc() const { return total ? double(correct) / double(total) : 0.0; }
    double acc_norm() const { return total ? double(correct_norm) / double(total) : 0.0; }
};

// The sum and mean loss of each ending of one example (for tests and reports).
struct EndingScores {
    std::vector<double> sum, mean;
};

// Scores the first `limit` examples (0 = all) with the model at its own (B,T):
// rows are packed B to a forward pass, padded to T. With a communicator of
// several ranks, rank r scores examples r, r + world, ... and the counts are
// summed over ranks. scores_out, when given, receives every scored example's
// ending scores (this rank's examples, in order).
HellaswagResult eval_hellaswag(GPT2& model, const std::vector<HellaswagExample>& examples, int64_t limit = 0,
                               Communicator* comm = nullptr, std::vector<EndingScores>* scores_out = nullptr);

}  // namespace gpt
