// The SVG chart module (ticks, labels, coordinates, clipping, legend) and
// `gpt plot` (reading logs, resumed runs, the CLI on a real training run).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "kernels/error.h"
#include "train/plot.h"
#include "train/svg_chart.h"
#include "tests/test_util.h"

using namespace gpt;
using gpt::test::TempDir;

namespace {

size_t count(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) n++;
    return n;
}

}  // namespace

TEST(SvgChart, NiceTicksAndLabels) {
    EXPECT_EQ(nice_ticks(0, 1, 6), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
    const auto t = nice_ticks(3.23, 4.05, 6);
    ASSERT_EQ(t.size(), 4u);  // 3.4, 3.6, 3.8, 4.0 (step 0.2)
    EXPECT_NEAR(t.front(), 3.4, 1e-12);
    EXPECT_NEAR(t.back(), 4.0, 1e-12);
    EXPECT_EQ(nice_ticks(0, 12345, 7), (std::vector<double>{0, 5000, 10000}));
    EXPECT_EQ(nice_ticks(0, 12345, 12).back(), 12000);
    EXPECT_TRUE(nice_ticks(1, 1, 6).empty());
    EXPECT_TRUE(nice_ticks(0, NAN, 6).empty());
    EXPECT_EQ(tick_label(0.25, 0.05, TickFormat::plain), "0.25");
    EXPECT_EQ(tick_label(2.5, 2.5, TickFormat::plain), "2.5");
    EXPECT_EQ(tick_label(1200, 200, TickFormat::plain), "1200");
    EXPECT_EQ(tick_label(1.5e9, 5e8, TickFormat::si), "1.5B");
    EXPECT_EQ(tick_label(20e6, 5e6, TickFormat::si), "20M");
    EXPECT_EQ(tick_label(0, 5e6, TickFormat::si), "0");
    EXPECT_EQ(tick_label(2500, 500, TickFormat::si), "2.5k");
}

TEST(SvgChart, PlacesDataWhereTheAxesSay) {
    Chart c;
    c.width = 800;
    c.height = 400;
    c.x_min = 0.0;
    c.x_max = 10.0;
    c.y_min = 0.0;
    c.y_max = 1.0;
    ChartSeries p;
    p.kind = ChartSeries::Kind::points;
    p.x = {5, 10};
    p.y = {0.5, 0.0};
    p.titles = {"mid <point>", "corner"};
    c.series.push_back(p);
    const std::string svg = c.render();
    // Plot area: x from 72 to 780, y from 34 to 348 (margins 72/20/34/52).
    EXPECT_NE(svg.find("<circle cx=\"426.0\" cy=\"191.0\""), std::string::npos) << svg;
    EXPECT_NE(svg.find("<circle cx=\"780.0\" cy=\"348.0\""), std::string::npos) << svg;
    EXPECT_NE(svg.find("<title>mid &lt;point&gt;</title>"), std::string::npos);
    EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

TEST(SvgChart, LinesBreakAtNanStepsReachTheEndAndLegendListsLabels) {
    Chart c;
    ChartSeries a;
    a.label = "run <a>";
    a.x = {0, 1, 2, 3, 4};
    a.y = {3, 2, NAN, 1.5, 1.2};
    c.series.push_back(a);
    ChartSeries b;
    b.kind = ChartSeries::Kind::step;
    b.label = "best";
    b.x = {0, 2};
    b.y = {3, 1};
    c.series.push_back(b);
    ChartSeries m;
    m.kind = ChartSeries::Kind::top_mark;
    m.label = "crashed";
    m.x = {1, 3};
    c.series.push_back(m);
    c.hlines.push_back({1.0, "target 1", "#c22", true});
    c.hlines.push_back({100.0, "off the chart", "#555", true});  // above the data: widens the axis
    c.y_max = 4.0;  // ... unless the range is fixed: then it is left out
    const std::string svg = c.render();
    EXPECT_NE(svg.find("run &lt;a&gt;"), std::string::npos);
    EXPECT_NE(svg.find(">best<"), std::string::npos);
    EXPECT_NE(svg.find(">crashed<"), std::string::npos);
    EXPECT_NE(svg.find(">target 1<"), std::string::npos);
    EXPECT_EQ(svg.find("off the chart"), std::string::npos);
    // The line through five points with a NaN in the middle is two pieces.
    std::smatch mm;
    ASSERT_TRUE(std::regex_search(svg, mm, std::regex("<path d=\"(M[^\"]*)\" fill=\"none\" stroke=\"#1f77b4\"")));
    EXPECT_EQ(count(mm[1].str(), "M"), 2u) << mm[1];
    EXPECT_EQ(count(mm[1].str(), "L"), 2u) << mm[1];
    // The step line ends at the right edge of the plot area (x = 900 - 20).
    ASSERT_TRUE(std::regex_search(svg, mm, std::regex("<path d=\"(M[^\"]*)\" fill=\"none\" stroke=\"#d62728\"")));
    EXPECT_NE(mm[1].str().find(" V"), std::string::npos);
    EXPECT_NE(mm[1].str().rfind("H880.0"), std::string::npos) << mm[1];
    // Two crosses above the plot area, plus the legend's.
    EXPECT_EQ(count(svg, "l8,8 m-8,0 l8,-8"), 3u);
    EXPECT_EQ(count(svg, "clip-path=\"url(#clip0_0)\""), 2u);
}

TEST(SvgChart, GridPutsChartsSideBySide) {
    Chart a, b;
    a.width = b.width = 500;
    a.height = b.height = 300;
    a.title = "left";
    b.title = "right";
    const std::string svg = render_grid({a, b, a}, 2);
    EXPECT_NE(svg.find("width=\"1000.0\" height=\"600.0\""), std::string::npos);
    EXPECT_NE(svg.find("<text x=\"750.0\" y=\"22.0\" text-anchor=\"middle\" font-size=\"15\">right</text>"), std::string::npos);
    EXPECT_NE(svg.find("<text x=\"250.0\" y=\"322.0\""), std::string::npos) << "third chart on the second row";
}

TEST(SvgChart, PngNeedsRsvgConvert) {
    TempDir d;
    test::write_file(d.file("a.svg"), Chart{}.render());
    const char* old = std::getenv("PATH");
    const std::string saved = old ? old : "";
    setenv("PATH", d.path.c_str(), 1);  // no rsvg-convert here
    std::string why;
    EXPECT_FALSE(svg_to_png(d.file("a.svg"), d.file("a.png"), &why));
    setenv("PATH", saved.c_str(), 1);
    EXPECT_NE(why.find("librsvg2-bin"), std::string::npos) << why;
    if (svg_to_png(d.file("a.svg"), d.file("b.png"), &why)) EXPECT_EQ(test::read_file(d.file("b.png")).substr(1, 3), "PNG");
}

TEST(Plot, EmaIsDebiased) {
    const auto c = ema_smooth({2, 2, 2, 2}, 10);
    for (double v : c) EXPECT_DOUBLE_EQ(v, 2);
    const auto s = ema_smooth({4, 0, NAN, 0}, 3);  // alpha 0.5
    EXPECT_DOUBLE_EQ(s[0], 4);
    EXPECT_DOUBLE_EQ(s[1], 2 / 1.5 * 1.0);  // (0.5*4*0.5 + 0) / (0.5 + 0.25)... = 1/0.75
    EXPECT_TRUE(std::isnan(s[2]));
}

TEST(Plot, ReadsLogsKeepingTheLatestRecordsOfAResumedRun) {
    TempDir d;
    std::string log =
        R"({"type":"config","loss_floor":1.25,"config":{"run":{"target_val_loss":2.5,"target_metric":"val_loss"}}})"
        "\n";
    for (int s = 1; s <= 6; s++)
        log += R"({"type":"step","step":)" + std::to_string(s) + R"(,"loss":)" + std::to_string(10 - s) + R"(,"train_time_s":)" +
               std::to_string(s) + R"(,"tokens":)" + std::to_string(100 * s) + "}\n";
    log += R"({"type":"val","step":4,"val_loss":6.5,"train_time_s":4,"tokens":400})"
           "\n";
    // Killed after step 6, resumed from the checkpoint at step 4: steps 5.. again.
    log += R"({"type":"config","loss_floor":1.25,"config":{"run":{"target_val_loss":2.5}}})"
           "\n";
    for (int s = 5; s <= 8; s++)
        log += R"({"type":"step","step":)" + std::to_string(s) + R"(,"loss":)" + std::to_string(20 + s) + R"(,"train_time_s":)" +
               std::to_string(s) + R"(,"tokens":)" + std::to_string(100 * s) + "}\n";
    log += R"({"type":"val","step":8,"val_loss":2.4,"train_time_s":8,"tokens":800})"
           "\n";
    log += R"({"type":"hellaswag","step":8,"acc":0.3,"acc_norm":0.31,"tokens":800})"
           "\n";
    log += R"({"type":"summary","time_to_target_s":7.5})"
           "\n";
    log += R"({"type":"step","ste)";  // a line cut short by a kill
    std::filesystem::create_directories(d.file("myrun"));
    test::write_file(d.file("myrun/log.jsonl"), log);
    const RunCurves r = read_run_curves(d.file("myrun"));
    EXPECT_EQ(r.name, "myrun");
    EXPECT_EQ(r.step_loss, (std::vector<double>{9, 8, 7, 6, 25, 26, 27, 28}));
    EXPECT_EQ(r.step_tokens.back(), 800);
    EXPECT_EQ(r.val_loss, (std::vector<double>{6.5, 2.4}));
    EXPECT_EQ(r.hs_acc_norm, (std::vector<double>{0.31}));
    EXPECT_EQ(r.target.value_or(0), 2.5);
    EXPECT_EQ(r.loss_floor.value_or(0), 1.25);
    EXPECT_EQ(r.time_to_target.value_or(0), 7.5);
    const std::string svg = plot_runs_svg({r}, PlotOptions{});
    EXPECT_NE(svg.find("myrun: target in 7.5 s"), std::string::npos);
    EXPECT_NE(svg.find(">target 2.5<"), std::string::npos);
    EXPECT_NE(svg.find(">loss floor 1.25<"), std::string::npos);
    EXPECT_NE(svg.find("HellaSwag (acc_norm) vs tokens"), std::string::npos);
    // A bad line that is not the last is an error naming the line.
    test::write_file(d.file("bad.jsonl"), "{\"type\":\"step\"\n{}\n");
    try {
        read_run_curves(d.file("bad.jsonl"));
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("line 1"), std::string::npos) << e.what();
    }
    EXPECT_THROW(read_run_curves(d.file("absent")), Error);
}

TEST(Plot, CommandDrawsRealRuns) {
    TempDir d;
    for (const char* name : {"a", "b"}) {
        const auto r = test::run_gpt("train --quiet --set model.n_embd=32 --set run.batch_size=4 --set run.max_steps=20 --set run.val_every=5 "
                                     "--set run.val_batches=2 --set run.target_val_loss=0.5 --set run.checkpoint_every=-1 --set run.seed=" +
                                     std::string(name[0] == 'a' ? "1" : "2") + " --set run.out_dir=" + d.file(name));
        ASSERT_EQ(r.code, 0) << r.output;
    }
    auto r = test::run_gpt("plot " + d.file("a") + " " + d.file("b") + " --out " + d.file("both.svg"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("wrote " + d.file("both.svg")), std::string::npos) << r.output;
    const std::string svg = test::read_file(d.file("both.svg"));
    EXPECT_NE(svg.find("loss vs training time"), std::string::npos);
    EXPECT_NE(svg.find("loss vs tokens"), std::string::npos);
    EXPECT_NE(svg.find(">target 0.5<"), std::string::npos);
    EXPECT_NE(svg.find("a: target not reached"), std::string::npos);
    EXPECT_NE(svg.find(">loss floor "), std::string::npos) << "the synthetic source knows its floor";
    EXPECT_NE(svg.find(">a"), std::string::npos);
    EXPECT_NE(svg.find(">b"), std::string::npos);
    EXPECT_EQ(count(svg, "val loss "), 2u * 2u * 5u) << "5 evaluations per run (steps 0, 5, 10, 15, 20) in each of 2 panels";
    // One run: the default output is in its directory.
    r = test::run_gpt("plot " + d.file("a"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_TRUE(std::filesystem::exists(d.file("a/plot.svg")));
    // Bad input: exit code 2 naming the problem.
    r = test::run_gpt("plot " + d.file("nothing-here"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("no log.jsonl"), std::string::npos) << r.output;
    r = test::run_gpt("plot " + d.file("a") + " --out " + d.file("x.png"));
    EXPECT_EQ(r.code, 2) << r.output;
}
