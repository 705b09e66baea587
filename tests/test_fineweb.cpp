// tools/fetch-fineweb against a local HTTP server that plays Hugging Face
// (tests/fetch_fineweb_test.py): listing and checksums, resume with Range,
// a cut connection, a server without Range, corrupt bytes, a shard without a
// published checksum, bad arguments. The real download cannot run here (no
// internet); everything around it does. Plus the speedrun config's protocol.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "train/config.h"
#include "tests/test_util.h"

TEST(Fineweb, FetchScriptAgainstALocalServer) {
    const std::string cmd = "python3 " + gpt::test::source_path("tests/fetch_fineweb_test.py") + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int status = pclose(p);
    EXPECT_EQ(status, 0) << out;
    EXPECT_NE(out.find(" passed, 0 failed"), std::string::npos) << out;
}

TEST(Fineweb, SpeedrunConfigStatesTheProtocol) {
    const gpt::Config c = gpt::load_config(gpt::test::source_path("configs/speedrun-124m.yaml"), {});
    EXPECT_EQ(c.model.n_layer, 12);
    EXPECT_EQ(c.model.n_embd, 768);
    EXPECT_EQ(c.model.vocab_size, 50257);
    EXPECT_EQ(gpt::train_seq_len(c), 1024);
    EXPECT_EQ(c.run.target_val_loss, 3.28);
    EXPECT_EQ(c.run.target_metric, "val_loss");
    EXPECT_EQ(c.data.source, "shards");
    EXPECT_NE(c.data.train.find("fineweb_train_"), std::string::npos);
    EXPECT_NE(c.data.val.find("fineweb_val_"), std::string::npos);
    EXPECT_EQ(int64_t(c.run.val_batches) * c.run.batch_size * gpt::train_seq_len(c), 10485760) << "the first 10,485,760 val tokens on one rank";
}
