#include "proxy/access_log.h"

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/common/temporary_folder.h"

namespace zoogate::proxy {
namespace {

using namespace std::chrono_literals;
using zoogate::testing::TemporaryFolder;

class AccessLogTest : public ::testing::Test {
 protected:
  std::unique_ptr<AccessLog> open_log() {
    auto log = AccessLog::open(path_);
    EXPECT_TRUE(log) << log.error().describe();
    return log ? std::move(*log) : nullptr;
  }

  std::string contents() const {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return std::move(text).str();
  }

  // Every line of the file, each checked to be one JSON object.
  std::vector<nlohmann::json> lines() const {
    std::vector<nlohmann::json> parsed;
    const std::string text = contents();
    EXPECT_TRUE(text.empty() || text.back() == '\n');
    size_t start = 0;
    while (start < text.size()) {
      const size_t end = text.find('\n', start);
      const std::string line = text.substr(start, end - start);
      start = end + 1;
      nlohmann::json object = nlohmann::json::parse(line, nullptr, false);
      EXPECT_TRUE(object.is_object()) << "not a JSON object: " << line;
      parsed.push_back(std::move(object));
    }
    return parsed;
  }

  const TemporaryFolder folder_;
  const std::string path_ = folder_.file("access.log");
};

AccessRecord sample_record() {
  AccessRecord record;
  record.time = std::chrono::sys_days{std::chrono::year{2024} / 5 / 1} + 12h + 34min + 56s + 789ms;
  record.request_id = "0123456789abcdef";
  record.listener = Listener::kHub;
  record.client = "10.0.0.7";
  record.method = "GET";
  record.target = "/acme/model/resolve/main/model.bin";
  record.status = 200;
  record.bytes_sent = 1087;
  record.duration = 12345678ns;
  record.route = Route::kResolve;
  return record;
}

const std::regex kTime(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");
const std::regex kRequestId("[0-9a-f]{16}");

TEST_F(AccessLogTest, WritesOneObjectPerRecordWithTheFieldsItKnows) {
  auto log = open_log();
  ASSERT_TRUE(log);
  log->write(sample_record());
  AccessRecord full = sample_record();
  full.listener = Listener::kEgress;
  full.route = Route::kApi;
  full.peer = "10.0.0.2";
  full.user = "alice";
  full.verdict = VerdictLabel::kDisarmed;
  full.upstream_status = 302;
  full.cache = CacheOutcome::kMiss;
  full.error = "upstream timed out";
  log->write(full);

  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), 2u);
  const nlohmann::json expected_minimal = {
      {"time", "2024-05-01T12:34:56.789Z"}, {"request_id", "0123456789abcdef"}, {"listener", "hub"},
      {"client", "10.0.0.7"}, {"method", "GET"}, {"target", "/acme/model/resolve/main/model.bin"},
      {"status", 200}, {"bytes_sent", 1087}, {"duration_ms", 12.345}, {"route", "resolve"}};
  EXPECT_EQ(written[0], expected_minimal);
  EXPECT_EQ(written[1]["listener"], "egress");
  EXPECT_EQ(written[1]["route"], "api");
  EXPECT_EQ(written[1]["peer"], "10.0.0.2");
  EXPECT_EQ(written[1]["user"], "alice");
  EXPECT_EQ(written[1]["verdict"], "disarmed");
  EXPECT_EQ(written[1]["upstream_status"], 302);
  EXPECT_EQ(written[1]["cache"], "miss");
  EXPECT_EQ(written[1]["error"], "upstream timed out");
  // Time comes first, for people reading the log.
  EXPECT_TRUE(contents().starts_with(R"({"time":"2024-05-01T12:34:56.789Z","request_id":)"));
}

TEST_F(AccessLogTest, NeverLogsQueriesFragmentsOrCredentials) {
  auto log = open_log();
  ASSERT_TRUE(log);
  const std::vector<std::pair<std::string, std::string>> targets = {
      {"/api/models/acme/m/tree/main?cursor=SECRET1&expand=1", "/api/models/acme/m/tree/main"},
      {"/acme/m/resolve/main/f.bin?Authorization=Bearer%20SECRET2", "/acme/m/resolve/main/f.bin"},
      {"/acme/m/resolve/main/f.bin#SECRET3", "/acme/m/resolve/main/f.bin"},
      {"http://bob:SECRET4@example.com:8080/x?y=SECRET5", "http://example.com:8080/x"},
      {"http://bob:SECRET6@example.com", "http://example.com"},
      {"/odd/path@host://not-a-scheme", "/odd/path@host://not-a-scheme"},
      {"huggingface.co:443", "huggingface.co:443"},
  };
  for (const auto& [target, logged] : targets) {
    AccessRecord record = sample_record();
    record.target = target;
    log->write(record);
  }
  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), targets.size());
  for (size_t i = 0; i < targets.size(); ++i) EXPECT_EQ(written[i]["target"], targets[i].second) << targets[i].first;
  const std::string text = contents();
  EXPECT_EQ(text.find("SECRET"), std::string::npos);
  EXPECT_EQ(text.find("Authorization"), std::string::npos);
  EXPECT_EQ(text.find("Bearer"), std::string::npos);
}

TEST_F(AccessLogTest, ReplacesBytesThatAreNotUtf8) {
  auto log = open_log();
  ASSERT_TRUE(log);
  AccessRecord record = sample_record();
  record.target = "/acme/m/resolve/main/\xff\xfe.bin";
  record.error = std::string("bad \xc3", 5);
  log->write(record);
  log->write_event("odd", {{"\xff", "\x80"}});
  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0]["target"], "/acme/m/resolve/main/\xEF\xBF\xBD\xEF\xBF\xBD.bin");
  EXPECT_EQ(written[1]["\xEF\xBF\xBD"], "\xEF\xBF\xBD");
}

TEST_F(AccessLogTest, WritesAuditEvents) {
  auto log = open_log();
  ASSERT_TRUE(log);
  log->write_event("blocked", {{"repository", "acme/m"}, {"file", "model.bin"}, {"size", 42}});
  log->write_event("stopped", {});
  log->write_event("forged", {{"time", "yesterday"}, {"event", "nothing"}, {"who", "x"}});
  log->write_event("listening", "http://127.0.0.1:8080");
  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), 4u);
  for (const nlohmann::json& line : written) {
    ASSERT_TRUE(line["time"].is_string());
    EXPECT_TRUE(std::regex_match(line["time"].get<std::string>(), kTime)) << line;
  }
  EXPECT_EQ(written[0]["event"], "blocked");
  EXPECT_EQ(written[0]["repository"], "acme/m");
  EXPECT_EQ(written[0]["file"], "model.bin");
  EXPECT_EQ(written[0]["size"], 42);
  EXPECT_EQ(written[1].size(), 2u);
  EXPECT_EQ(written[2]["event"], "forged");
  EXPECT_NE(written[2]["time"], "yesterday");
  EXPECT_EQ(written[2]["who"], "x");
  EXPECT_EQ(written[3]["detail"], "http://127.0.0.1:8080");
}

TEST_F(AccessLogTest, LinesStayWholeWithManyThreadsAndTwoWritersOnOneFile) {
  // Two logs on one file stand for two zoogate processes sharing it.
  auto first = open_log();
  auto second = open_log();
  ASSERT_TRUE(first && second);
  constexpr int kThreads = 8;
  constexpr int kRecords = 300;
  // Some lines longer than a pipe buffer and a page, where a torn or interleaved write would show.
  const std::string long_path = "/acme/m/resolve/main/" + std::string(9000, 'p');
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      AccessLog& log = t % 2 == 0 ? *first : *second;
      for (int i = 0; i < kRecords; ++i) {
        AccessRecord record = sample_record();
        record.time = std::chrono::system_clock::now();
        record.request_id = new_request_id();
        record.target = (i % 3 == 0 ? long_path : "/t" + std::to_string(t)) + "?token=SECRET";
        record.status = 200 + static_cast<unsigned>(t);
        if (i % 10 == 0) log.write_event("tick", {{"thread", t}});
        log.write(record);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  first.reset();
  second.reset();

  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), static_cast<size_t>(kThreads * (kRecords + kRecords / 10)));
  std::set<std::string> request_ids;
  for (const nlohmann::json& line : written) {
    if (line.contains("event")) {
      EXPECT_EQ(line["event"], "tick");
      continue;
    }
    for (const char* field : {"time", "request_id", "listener", "client", "method", "target", "status", "bytes_sent",
                              "duration_ms", "route"}) {
      EXPECT_TRUE(line.contains(field)) << field << " missing in " << line.dump();
    }
    EXPECT_TRUE(std::regex_match(line["time"].get<std::string>(), kTime));
    const std::string id = line["request_id"].get<std::string>();
    EXPECT_TRUE(std::regex_match(id, kRequestId)) << id;
    request_ids.insert(id);
    const std::string target = line["target"].get<std::string>();
    EXPECT_TRUE(target == long_path || target == "/t" + std::to_string(line["status"].get<unsigned>() - 200))
        << target.substr(0, 80);
  }
  EXPECT_EQ(request_ids.size(), static_cast<size_t>(kThreads * kRecords));
  EXPECT_EQ(contents().find("SECRET"), std::string::npos);
}

TEST_F(AccessLogTest, AppendsToAnExistingFile) {
  { std::ofstream(path_) << "{\"earlier\":true}\n"; }
  auto log = open_log();
  ASSERT_TRUE(log);
  log->write(sample_record());
  const std::vector<nlohmann::json> written = lines();
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0]["earlier"], true);
  EXPECT_EQ(written[1]["status"], 200);
}

TEST_F(AccessLogTest, ReportsAFileItCannotOpen) {
  auto log = AccessLog::open(folder_.file("missing-folder/access.log"));
  ASSERT_FALSE(log);
  EXPECT_EQ(log.error().code, ErrorCode::kIo);
  EXPECT_NE(log.error().message.find("missing-folder"), std::string::npos);
}

TEST(AccessLog, DashMeansStandardError) {
  auto log = AccessLog::open("-");
  ASSERT_TRUE(log) << log.error().describe();
  ::testing::internal::CaptureStderr();
  (*log)->write_event("listening", {{"hub", "http://127.0.0.1:8080"}});
  const std::string captured = ::testing::internal::GetCapturedStderr();
  ASSERT_FALSE(captured.empty());
  EXPECT_EQ(captured.back(), '\n');
  EXPECT_EQ(nlohmann::json::parse(captured)["hub"], "http://127.0.0.1:8080");
}

TEST(AccessLog, RequestIdsAreSixteenHexDigitsAndUniqueAcrossThreads) {
  constexpr int kThreads = 8;
  constexpr int kIds = 5000;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&ids, t] {
      for (int i = 0; i < kIds; ++i) ids[static_cast<size_t>(t)].push_back(new_request_id());
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::set<std::string> unique;
  for (const auto& per_thread : ids) {
    for (const std::string& id : per_thread) {
      EXPECT_TRUE(std::regex_match(id, kRequestId)) << id;
      unique.insert(id);
    }
  }
  EXPECT_EQ(unique.size(), static_cast<size_t>(kThreads * kIds));
}

}  // namespace
}  // namespace zoogate::proxy
