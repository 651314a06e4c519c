// Shared by the engine tests: collecting a request's outputs across the engine thread, and the
// reference greedy continuation of one sequence on its own (SequenceRunner, contiguous KV).
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <vector>

#include "engine/engine.h"
#include "engine/generate.h"

namespace nb::testing {

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<RequestId, std::vector<int32_t>> tokens;
  std::map<RequestId, FinishReason> finished;
  std::map<RequestId, int64_t> cached_prompt;
  std::map<RequestId, RequestOutput> last;  // each request's latest output

  OutputCallback callback() {
    return [this](const RequestOutput& o) {
      std::lock_guard<std::mutex> lock(mu);
      auto& t = tokens[o.id];
      t.insert(t.end(), o.tokens.begin(), o.tokens.end());
      last[o.id] = o;
      if (o.finished) {
        finished[o.id] = o.finish_reason;
        cached_prompt[o.id] = o.num_cached_prompt_tokens;
        cv.notify_all();
      }
    };
  }
  bool wait_all(size_t n, std::chrono::seconds timeout = std::chrono::seconds(300)) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return finished.size() >= n; });
  }
};

inline std::vector<int32_t> greedy_alone(LlamaModel& m, const std::vector<int32_t>& prompt, int64_t max_tokens,
                                         const std::vector<int32_t>& stop_ids = {}) {
  SequenceRunner runner(m, m.config().max_seq_len);
  SamplingParams sp;
  sp.temperature = 0;
  Sampler sampler = std::move(Sampler::create(sp).value());
  std::vector<int32_t> out;
  GenerateOptions opts;
  opts.max_new_tokens = max_tokens;
  opts.stop_ids = stop_ids;
  EXPECT_TRUE(runner.generate(prompt, sampler, opts, [&](int32_t id) { out.push_back(id); return true; }).ok());
  return out;
}

}  // namespace nb::testing
