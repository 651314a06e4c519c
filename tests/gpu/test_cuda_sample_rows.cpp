// cuda::sample_rows against cpu::ref::sample_rows (the rule of backend/ops.h) on fresh random
// logits: every row must give the reference's token, except when its uniform lies within 1e-6 of a
// CDF edge between the two tokens (the sums differ in order); such rows are counted and printed.
// Then the device path end to end: generate on the GPU with a fixed seed gives the same tokens with
// NIBBLE_GPU_SAMPLING on and off.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../cpp/sampling_test_util.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "engine/generate.h"
#include "engine/sampler.h"
#include "gpu_test_util.h"
#include "model/forward_backend.h"
#include "model/llama.h"
#include "model/weights.h"

namespace nb {
namespace {

class CudaSampleRows : public gpu_test::CudaTest {};

TEST_F(CudaSampleRows, MatchesReferenceExceptAtCdfEdges) {
  const std::vector<SampleRowParams> settings = {
      {1.0f, 0, 1.0f, 0.0f, 0},  {0.8f, 0, 1.0f, 0.0f, 0},   {0.8f, 40, 0.9f, 0.05f, 0}, {0.7f, 0, 0.9f, 0.0f, 0},
      {1.2f, 0, 0.5f, 0.2f, 0},  {1.0f, 0, 1.0f, 0.1f, 0},   {0.6f, 12, 1.0f, 0.0f, 0},  {1.0f, 1, 1.0f, 0.0f, 0},
      {0.0f, 0, 1.0f, 0.0f, 0},  {1.5f, 5000, 0.99f, 0.0f, 0}, {0.9f, 0, 0.999f, 0.0f, 0}, {1.0f, 50, 1.0f, 0.0f, 0}};
  int total = 0, edges = 0;
  for (const int64_t vocab : {int64_t{49152}, int64_t{32000}}) {
    for (const int64_t rows : {int64_t{1}, int64_t{13}, int64_t{64}}) {
      const auto seed = static_cast<uint32_t>(vocab * 131 + rows);
      std::vector<float> x = gpu_test::random_normal(static_cast<size_t>(rows * vocab), seed, 3.0f);
      std::mt19937_64 rng(gpu_test::seed(seed + 1));
      std::vector<SampleRowParams> params(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        float* row = x.data() + r * vocab;
        if (r % 4 == 1) {  // exact ties around the top: broken by id
          for (int64_t i = 1; i < 40; ++i) row[i * 97] = row[0];
        }
        if (r % 5 == 2) row[r] = -INFINITY;
        params[static_cast<size_t>(r)] = settings[static_cast<size_t>(r) % settings.size()];
        params[static_cast<size_t>(r)].uniform = static_cast<double>(rng() >> 11) * 0x1.0p-53;
      }
      std::vector<int32_t> want(static_cast<size_t>(rows));
      cpu::ref::sample_rows({x.data(), params.data(), want.data(), rows, vocab});
      cuda::DeviceBuffer dx = upload(x);
      cuda::DeviceBuffer dp = upload_bytes(params.data(), params.size() * sizeof(SampleRowParams));
      cuda::DeviceBuffer dout = poisoned(static_cast<size_t>(rows) * 4);
      NB_ASSERT_OK(cuda::sample_rows({dx.as<float>(), dp.as<SampleRowParams>(), dout.as<int32_t>(), rows, vocab}, ctx()));
      std::vector<int32_t> got(static_cast<size_t>(rows));
      NB_ASSERT_OK(cuda::copy_to_host(got.data(), dout.data(), got.size() * 4, ctx().stream()));
      NB_ASSERT_OK(ctx().synchronize());
      for (int64_t r = 0; r < rows; ++r) {
        const auto i = static_cast<size_t>(r);
        ++total;
        if (got[i] == want[i]) continue;
        const std::span<const float> logits(x.data() + r * vocab, static_cast<size_t>(vocab));
        ASSERT_TRUE(sampling_test::near_edge_between(logits, params[i], got[i], want[i], 1e-6))
            << "vocab " << vocab << " rows " << rows << " row " << r << " (setting " << r % 12 << "): GPU " << got[i]
            << ", reference " << want[i] << ", u " << params[i].uniform;
        ++edges;
      }
    }
  }
  std::printf("  %d rows, %d differ at a CDF edge (|u - edge| < 1e-6)\n", total, edges);
}

TEST_F(CudaSampleRows, InvalidRowsGiveMinusOne) {
  std::vector<float> x = {0.5f, NAN, 1.0f, 2.0f, INFINITY, 0.0f, -INFINITY, -INFINITY, -INFINITY};
  const std::vector<SampleRowParams> params = {{0.8f, 0, 1.0f, 0.0f, 0.3}, {1.0f, 0, 0.9f, 0.0f, 0.3}, {0.0f, 0, 1.0f, 0.0f, 0}};
  cuda::DeviceBuffer dx = upload(x);
  cuda::DeviceBuffer dp = upload_bytes(params.data(), params.size() * sizeof(SampleRowParams));
  cuda::DeviceBuffer dout = poisoned(12);
  NB_ASSERT_OK(cuda::sample_rows({dx.as<float>(), dp.as<SampleRowParams>(), dout.as<int32_t>(), 3, 3}, ctx()));
  std::vector<int32_t> got(3);
  NB_ASSERT_OK(cuda::copy_to_host(got.data(), dout.data(), 12, ctx().stream()));
  NB_ASSERT_OK(ctx().synchronize());
  EXPECT_EQ(got, (std::vector<int32_t>{-1, -1, -1}));
}

// What `nibble generate --device cuda --temp 0.8 --top-p 0.9 --seed 1` runs (SequenceRunner, the CLI's
// default top-k 40 and min-p 0.05), with the device sampler on and off.
std::vector<int32_t> generate_on_gpu(const std::string& path, bool device_sampling) {
  if (device_sampling) {
    unsetenv("NIBBLE_GPU_SAMPLING");
  } else {
    setenv("NIBBLE_GPU_SAMPLING", "0", 1);
  }
  std::vector<int32_t> out;
  auto loaded = load_model(path);
  EXPECT_TRUE(loaded.ok());
  if (!loaded.ok()) return out;
  auto model = LlamaModel::create(std::move(loaded->weights), 1);
  EXPECT_TRUE(model.ok());
  CudaForwardOptions o;
  o.dtype = "f32";
  auto be = create_cuda_forward((*model)->weights(), o);
  EXPECT_TRUE(be.ok()) << be.status().to_string();
  if (!be.ok()) return out;
  (*model)->set_backend(std::move(*be));
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.top_k = 40;
  sp.top_p = 0.9f;
  sp.min_p = 0.05f;
  sp.seed = 1;
  auto sampler = Sampler::create(sp);
  SequenceRunner runner(**model, 256);
  GenerateOptions opts;
  opts.max_new_tokens = 200;
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378};
  auto st = runner.generate(prompt, *sampler, opts, [&](int32_t t) {
    out.push_back(t);
    return true;
  });
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  unsetenv("NIBBLE_GPU_SAMPLING");
  return out;
}

TEST_F(CudaSampleRows, GenerateSameTokensWithDeviceSamplingOnAndOff) {
  const std::string path = gpu_test::model_path("stories260K.bin");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present (see scripts/gpu.sh)";
  const std::vector<int32_t> host = generate_on_gpu(path, false), device = generate_on_gpu(path, true);
  ASSERT_GT(host.size(), 20u);
  EXPECT_EQ(device, host);
}

}  // namespace
}  // namespace nb
