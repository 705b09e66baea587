#include "data/data_cli.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "data/files.h"
#include "data/markov.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "kernels/error.h"

namespace gpt {

namespace {

constexpr int kGpt2Vocab = 50257;
constexpr int kEndOfText = 50256;  // GPT-2 <|endoftext|>: one per document in GPT-2 shards

const char* kUsage =
    "usage: gpt data <command> [options]\n"
    "\n"
    "commands:\n"
    "  write-shard OUT [--input FILE] [--vocab N]   write token ids (text) as an llm.c shard\n"
    "  info FILE... [--vocab N]                     validate shards and print their statistics\n"
    "  prepare --out DIR INPUT... [--tokenizer DIR] [--shard-tokens N] [--val-every K] ...\n"
    "                                               tokenize text / JSONL files into train and val shards\n"
    "  synthetic-info [--order K --vocab V --sharpness S --seed N --seq-len T]\n"
    "                                               entropy rate and loss floor of the synthetic chain\n"
    "  encode [--tokenizer DIR] [--allow-special]   GPT-2 token ids of stdin's bytes\n"
    "  decode [--tokenizer DIR]                     the bytes of token ids read from stdin\n"
    "\n"
    "Run 'gpt data <command> --help' for a command's options.\n";

const char* kEncodeUsage =
    "usage: gpt data encode [--tokenizer DIR] [--allow-special]\n"
    "\n"
    "Reads all of stdin as bytes and prints its GPT-2 token ids, separated by\n"
    "single spaces, then a newline. Invalid UTF-8 is encoded byte by byte.\n"
    "\n"
    "  --tokenizer DIR   folder with encoder.json and vocab.bpe (default: $GPT_TOKENIZER_DIR, else the\n"
    "                    built-in GPT-2 files)\n"
    "  --allow-special   encode each \"<|endoftext|>\" as token 50256 (default: as ordinary text)\n";

const char* kDecodeUsage =
    "usage: gpt data decode [--tokenizer DIR] [--shard FILE]\n"
    "\n"
    "Reads whitespace-separated GPT-2 token ids from stdin (or the tokens of a\n"
    "token shard) and writes their bytes to stdout, unchanged (no newline added).\n"
    "\n"
    "  --tokenizer DIR   folder with encoder.json and vocab.bpe (default: $GPT_TOKENIZER_DIR, else the\n"
    "                    built-in GPT-2 files)\n"
    "  --shard FILE      decode the tokens of an llm.c token shard instead of stdin\n";

const char* kWriteUsage =
    "usage: gpt data write-shard OUT [--input FILE] [--vocab N]\n"
    "\n"
    "Reads token ids as whitespace-separated integers from FILE (default: stdin)\n"
    "and writes them to OUT as an llm.c token shard (magic 20240520, version 1,\n"
    "uint16 tokens), atomically.\n"
    "\n"
    "  --input FILE   read ids from FILE instead of stdin\n"
    "  --vocab N      every id must be < N (default 50257; at most 65536)\n";

const char* kInfoUsage =
    "usage: gpt data info FILE... [--vocab N]\n"
    "\n"
    "Validates each shard (header, exact size, every token < N) and prints its\n"
    "header fields, size, token count, min/max token id, distinct ids and the\n"
    "count of token 50256 (<|endoftext|>: documents in GPT-2 shards).\n"
    "\n"
    "  --vocab N      tokens must be < N (default 50257)\n";

const char* kSynthUsage =
    "usage: gpt data synthetic-info [--order K] [--vocab V] [--sharpness S] [--seed N] [--seq-len T]\n"
    "\n"
    "Builds the synthetic Markov chain (the data.synthetic.* keys) and prints its\n"
    "entropy rate and the lowest mean loss reachable with a T-token window.\n"
    "\n"
    "  --order K       Markov order (default 2)\n"
    "  --vocab V       tokens in the chain (default 64)\n"
    "  --sharpness S   scale of the transition logits (default 2.0)\n"
    "  --seed N        seed of the transition table (default 1234)\n"
    "  --seq-len T     window length for the floor (default 64)\n";

bool is_help(const std::string& a) { return a == "--help" || a == "-h"; }

long long parse_int(const std::string& flag, const std::string& v) {
    long long x = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size()) bad_input(flag + ": '" + v + "' is not an integer");
    return x;
}

double parse_double(const std::string& flag, const std::string& v) {
    try {
        size_t n = 0;
        double x = std::stod(v, &n);
        if (n == v.size()) return x;
    } catch (const std::exception&) {
    }
    bad_input(flag + ": '" + v + "' is not a number");
}

// Walks the arguments of a command: options with one value, the rest positional.
struct Args {
    std::vector<std::string> positional;
    std::vector<std::pair<std::string, std::string>> options;
    bool help = false;
};

Args split_args(const std::vector<std::string>& args, size_t from, const std::vector<std::string>& known,
                const std::string& cmd) {
    Args r;
    for (size_t i = from; i < args.size(); i++) {
        const std::string& a = args[i];
        if (is_help(a)) {
            r.help = true;
        } else if (a.size() > 1 && a[0] == '-') {
            std::string name = a, value;
            bool inline_value = false;
            if (auto eq = a.find('='); eq != std::string::npos) {
                name = a.substr(0, eq);
                value = a.substr(eq + 1);
                inline_value = true;
            }
            if (std::find(known.begin(), known.end(), name) == known.end())
                bad_input(cmd + ": unknown option '" + name + "' (see 'gpt data " + cmd + " --help')");
            if (!inline_value) {
                if (i + 1 >= args.size()) bad_input(cmd + ": " + name + " needs a value");
                value = args[++i];
            }
            r.options.emplace_back(name, value);
        } else {
            r.positional.push_back(a);
        }
    }
    return r;
}

int vocab_option(const std::string& v, long long max) {
    long long n = parse_int("--vocab", v);
    if (n < 1 || n > max) bad_input("--vocab must be in [1, " + std::to_string(max) + "] (got " + v + ")");
    return int(n);
}

int cmd_write_shard(const std::vector<std::string>& args) {
    Args a = split_args(args, 1, {"--input", "--vocab"}, "write-shard");
    if (a.help) {
        std::cout << kWriteUsage;
        return 0;
    }
    if (a.positional.size() != 1)
        bad_input("write-shard takes one output path (got " + std::to_string(a.positional.size()) + ")\n" + kWriteUsage);
    std::string input;
    int vocab = kGpt2Vocab;
    for (auto& [k, v] : a.options) {
        if (k == "--input") input = v;
        if (k == "--vocab") vocab = vocab_option(v, 65536);
    }
    // --input is opened like every input (regular files only); stdin is read as it comes.
    std::optional<InputFile> file;
    const std::string name = input.empty() ? "<stdin>" : input;
    if (!input.empty()) file = InputFile::open(input, "--input");
    auto next_line = [&](std::string& line) { return file ? file->read_line(line) : bool(std::getline(std::cin, line)); };
    std::vector<int32_t> tokens;
    std::string line;
    for (long lineno = 1; next_line(line); lineno++) {
        std::istringstream ws(line);
        std::string w;
        for (int word = 1; ws >> w; word++) {
            long long x = -1;
            auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), x);
            if (ec != std::errc() || p != w.data() + w.size() || x < 0 || x >= vocab)
                bad_input(name + ":" + std::to_string(lineno) + ": word " + std::to_string(word) + " '" + w +
                          "' is not a token id (want an integer in [0, " + std::to_string(vocab) + "))");
            tokens.push_back(int32_t(x));
        }
    }
    if (!file && std::cin.bad()) run_failed(name + ": read error");
    if (tokens.empty()) bad_input(name + ": no token ids to write (a shard needs at least one)");
    write_shard(a.positional[0], tokens, vocab);
    std::cout << "wrote " << tokens.size() << " tokens to '" << a.positional[0] << "'\n";
    return 0;
}

int cmd_info(const std::vector<std::string>& args) {
    Args a = split_args(args, 1, {"--vocab"}, "info");
    if (a.help) {
        std::cout << kInfoUsage;
        return 0;
    }
    if (a.positional.empty()) bad_input(std::string("info needs at least one shard file\n") + kInfoUsage);
    int vocab = kGpt2Vocab;
    for (auto& [k, v] : a.options)
        if (k == "--vocab") vocab = vocab_option(v, 65536);
    int rc = 0;
    for (const auto& f : a.positional) {
        try {
            Shard s(f, vocab, "", "--vocab");
            const uint16_t* t = s.tokens();
            std::vector<uint64_t> hist(65536, 0);
            for (uint64_t i = 0; i < s.size(); i++) hist[t[i]]++;
            int lo = -1, hi = -1;
            uint64_t distinct = 0;
            for (int v = 0; v < 65536; v++) {
                if (!hist[size_t(v)]) continue;
                if (lo < 0) lo = v;
                hi = v;
                distinct++;
            }
            std::cout << f << ":\n"
                      << "  magic       " << s.header().magic << "\n"
                      << "  version     " << s.header().version << "\n"
                      << "  file bytes  " << s.header().file_bytes << "\n"
                      << "  tokens      " << s.size() << "\n"
                      << "  min token   " << lo << "\n"
                      << "  max token   " << hi << "\n"
                      << "  distinct    " << distinct << "\n"
                      << "  documents   " << hist[kEndOfText] << " (count of token " << kEndOfText << ")\n";
        } catch (const Error& e) {
            // Report every bad file, not only the first.
            std::cerr << "gpt data: error: " << e.what() << "\n";
            rc = std::max(rc, exit_code(e.kind));
        }
    }
    return rc;
}

int cmd_encode(std::vector<std::string> args) {
    // --allow-special takes no value, unlike the options split_args knows.
    auto flag = std::find(args.begin() + 1, args.end(), "--allow-special");
    const bool allow_special = flag != args.end();
    if (allow_special) args.erase(flag);
    Args a = split_args(args, 1, {"--tokenizer"}, "encode");
    if (a.help) {
        std::cout << kEncodeUsage;
        return 0;
    }
    if (!a.positional.empty())
        bad_input("encode takes no positional arguments (got '" + a.positional[0] + "'); it reads stdin");
    std::string dir;
    for (auto& [k, v] : a.options)
        if (k == "--tokenizer") dir = v;
    Tokenizer tok = Tokenizer::load_default(dir);
    std::ostringstream in;
    in << std::cin.rdbuf();
    if (std::cin.bad()) run_failed("<stdin>: read error");
    std::vector<int32_t> ids = tok.encode(in.str(), allow_special);
    std::string out;
    for (size_t i = 0; i < ids.size(); i++) {
        if (i) out += ' ';
        out += std::to_string(ids[i]);
    }
    out += '\n';
    std::cout << out;
    return 0;
}

int cmd_decode(const std::vector<std::string>& args) {
    Args a = split_args(args, 1, {"--tokenizer", "--shard"}, "decode");
    if (a.help) {
        std::cout << kDecodeUsage;
        return 0;
    }
    if (!a.positional.empty())
        bad_input("decode takes no positional arguments (got '" + a.positional[0] + "'); it reads stdin");
    std::string dir, shard_path;
    for (auto& [k, v] : a.options) {
        if (k == "--tokenizer") dir = v;
        if (k == "--shard") shard_path = v;
    }
    Tokenizer tok = Tokenizer::load_default(dir);
    if (!shard_path.empty()) {
        // Validated against the tokenizer's vocabulary, decoded in 1M-token pieces.
        const Shard shard(shard_path, tok.vocab_size(), "--shard", "the tokenizer's vocabulary");
        const size_t piece = size_t(1) << 20;
        for (uint64_t i = 0; i < shard.size(); i += piece) {
            const uint64_t end = std::min<uint64_t>(shard.size(), i + piece);
            std::cout << tok.decode(std::vector<int32_t>(shard.tokens() + i, shard.tokens() + end));
        }
        std::cout.flush();
        return 0;
    }
    std::vector<int32_t> ids;
    std::string w;
    for (long word = 1; std::cin >> w; word++) {
        long long x = -1;
        auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), x);
        if (ec != std::errc() || p != w.data() + w.size() || x < 0 || x >= tok.vocab_size())
            bad_input("<stdin>: word " + std::to_string(word) + " '" + w +
                      "' is not a token id (want an integer in [0, " + std::to_string(tok.vocab_size()) + "))");
        ids.push_back(int32_t(x));
    }
    if (std::cin.bad()) run_failed("<stdin>: read error");
    std::cout << tok.decode(ids);
    std::cout.flush();
    return 0;
}

int cmd_synthetic_info(const std::vector<std::string>& args) {
    Args a = split_args(args, 1, {"--order", "--vocab", "--sharpness", "--seed", "--seq-len"}, "synthetic-info");
    if (a.help) {
        std::cout << kSynthUsage;
        return 0;
    }
    if (!a.positional.empty()) bad_input("synthetic-info takes no positional arguments (got '" + a.positional[0] + "')");
    SyntheticConfig sc;
    long long T = 64;
    for (auto& [k, v] : a.options) {
        if (k == "--order") sc.order = int(std::clamp<long long>(parse_int(k, v), -1, 1 << 20));
        if (k == "--vocab") sc.vocab = int(std::clamp<long long>(parse_int(k, v), -1, 1 << 24));
        if (k == "--sharpness") sc.sharpness = parse_double(k, v);
        if (k == "--seed") sc.seed = int(std::clamp<long long>(parse_int(k, v), INT32_MIN, INT32_MAX));
        if (k == "--seq-len") T = parse_int(k, v);
    }
    if (T < 1 || T > (1 << 24)) bad_input("--seq-len must be in [1, 2^24] (got " + std::to_string(T) + ")");
    // The chain's own check against a model vocabulary is moot here: any model
    // running this chain needs vocab_size >= V.
    MarkovChain chain(sc, std::max(sc.vocab, 2));
    std::printf("synthetic Markov chain: order %d, vocab %d, sharpness %g, seed %d\n", sc.order, sc.vocab,
                sc.sharpness, sc.seed);
    std::printf("  contexts        %llu\n", (unsigned long long)chain.contexts());
    std::printf("  entropy rate    %.6f nats/token (uniform: %.6f)\n", chain.entropy_rate(),
                std::log(double(sc.vocab)));
    std::printf("  floor at T=%lld  %.6f nats/token\n", T, chain.loss_floor(int(T)));
    return 0;
}

}  // namespace

int data_main(const std::vector<std::string>& args) {
    try {
        if (args.empty()) {
            std::cerr << kUsage;
            return 2;
        }
        const std::string& cmd = args[0];
        if (is_help(cmd) || cmd == "help") {
            std::cout << kUsage;
            return 0;
        }
        if (cmd == "write-shard") return cmd_write_shard(args);
        if (cmd == "info") return cmd_info(args);
        if (cmd == "synthetic-info") return cmd_synthetic_info(args);
        if (cmd == "encode") return cmd_encode(args);
        if (cmd == "decode") return cmd_decode(args);
        if (cmd == "prepare") return prepare_main(args);
        bad_input("unknown command '" + cmd +
                  "' (commands: write-shard, info, synthetic-info, prepare, encode, decode; see 'gpt data --help')");
    } catch (const Error& e) {
        std::cerr << "gpt data: error: " << e.what() << "\n";
        return exit_code(e.kind);
    } catch (const std::exception& e) {
        std::cerr << "gpt data: error: " << e.what() << "\n";
        return 1;
    }
}

}  // namespace gpt
