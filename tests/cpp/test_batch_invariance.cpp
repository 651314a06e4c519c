// Batch invariance: a token's matmul output must not depend on which other tokens share the call,
// how many threads split it, or which kernel runs. Continuous batching relies on it: a request's
// greedy output must be the same alone or in a batch. The quantized kernels all follow the one
// canonical order written in backend/cpu/matmul_internal.h, so these comparisons are exact.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul_internal.h"

namespace nb {
namespace {

const DType kAllTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};

Tensor random_weights(DType t, int64_t n, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> wf(static_cast<size_t>(n * k));
  for (auto& v : wf) v = nd(rng) * 0.05f;
  Tensor w = Tensor::empty({n, k}, t);
  for (int64_t r = 0; r < n; ++r) quantize_row(t, wf.data() + r * k, w.row(r), k);
  return w;
}

std::vector<float> random_rows(int64_t m, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(m * k));
  for (auto& v : x) v = nd(rng);
  return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(BatchInvariance, MatmulRowsAreIndependentOfBatchSize) {
  ThreadPool pool(2);
  std::mt19937 rng(11);
  const int64_t n = 200, k = 576;
  for (DType t : kAllTypes) {
    Tensor w = random_weights(t, n, k, rng);
    for (int64_t m : {2, 5, 11, 12, 13, 40, 129}) {
      std::vector<float> x = random_rows(m, k, rng);
      std::vector<float> batched(static_cast<size_t>(m * n)), single(static_cast<size_t>(n));
      cpu::matmul({w, x.data(), batched.data(), m}, pool);
      for (int64_t r = 0; r < m; ++r) {
        cpu::matmul({w, x.data() + r * k, single.data(), 1}, pool);
        ASSERT_EQ(0, std::memcmp(single.data(), batched.data() + r * n, static_cast<size_t>(n) * sizeof(float)))
            << dtype_name(t) << " m=" << m << " row " << r;
      }
    }
  }
}

// A token's row must also not depend on where in the batch it sits (other rows around it change
// which tile / strip pass and which lanes it lands in).
TEST(BatchInvariance, MatmulRowIsIndependentOfPositionAndNeighbours) {
  ThreadPool pool(2);
  std::mt19937 rng(12);
  const int64_t n = 75, k = 224;  // 7 blocks: a partial last group; 75 rows: partial tiles and strips
  for (DType t : kAllTypes) {
    Tensor w = random_weights(t, n, k, rng);
    const std::vector<float> probe = random_rows(1, k, rng);
    std::vector<float> alone(static_cast<size_t>(n));
    cpu::matmul({w, probe.data(), alone.data(), 1}, pool);
    for (int64_t m : {3, 12, 17}) {
      for (int64_t pos : {int64_t{0}, m / 2, m - 1}) {
        std::vector<float> x = random_rows(m, k, rng);
        std::memcpy(x.data() + pos * k, probe.data(), static_cast<size_t>(k) * sizeof(float));
        std::vector<float> y(static_cast<size_t>(m * n));
        cpu::matmul({w, x.data(), y.data(), m}, pool);
        ASSERT_EQ(0, std::memcmp(alone.data(), y.data() + pos * n, static_cast<size_t>(n) * sizeof(float)))
            << dtype_name(t) << " m=" << m << " pos=" << pos;
      }
    }
  }
}

// 1 and 2 threads split the output rows differently (chunk edges move, partial tiles appear).
TEST(BatchInvariance, MatmulIsIndependentOfThreadCount) {
  ThreadPool one(1), two(2);
  std::mt19937 rng(13);
  for (int64_t k : {int64_t{128}, int64_t{160}, int64_t{576}}) {
    for (DType t : kAllTypes) {
      const int64_t n = 203;
      Tensor w = random_weights(t, n, k, rng);
      for (int64_t m : {1, 4, 7, 12, 33}) {
        std::vector<float> x = random_rows(m, k, rng);
        std::vector<float> y1(static_cast<size_t>(m * n)), y2(y1.size());
        cpu::matmul({w, x.data(), y1.data(), m}, one);
        cpu::matmul({w, x.data(), y2.data(), m}, two);
        ASSERT_TRUE(same_bits(y1, y2)) << dtype_name(t) << " k=" << k << " m=" << m;
      }
    }
  }
}

// Every quantized kernel this machine can run gives the portable reference's bits: the tile and
// strip kernels (AVX-512 VNNI), the AVX2 fallback, and the dispatcher, at every tail shape
// (K = 32 * num_blocks with num_blocks % 4 = 0, 1, 2, 3).
TEST(BatchInvariance, QuantizedKernelsAllFollowTheCanonicalOrder) {
  struct Kernel {
    std::string name;
    void (*fn)(const MatmulParams&, ThreadPool&);
  };
  std::vector<Kernel> kernels = {{"dispatch", &cpu::matmul}};
  if (cpu::avx2::available()) kernels.push_back({"avx2", &cpu::avx2::matmul_quantized});
  if (cpu::avx512::available()) kernels.push_back({"avx512_strips", &cpu::avx512::matmul_quantized_strips});
  ThreadPool pool(2);
  std::mt19937 rng(14);
  for (int64_t k : {int64_t{32}, int64_t{64}, int64_t{96}, int64_t{128}, int64_t{160}, int64_t{576}}) {
    for (DType t : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
      const int64_t n = 37;
      Tensor w = random_weights(t, n, k, rng);
      for (int64_t m : {1, 2, 3, 5, 13}) {
        std::vector<float> x = random_rows(m, k, rng);
        std::vector<float> ref(static_cast<size_t>(m * n));
        cpu::portable::matmul_quantized({w, x.data(), ref.data(), m}, pool);
        for (const Kernel& kern : kernels) {
          std::vector<float> y(ref.size());
          kern.fn({w, x.data(), y.data(), m}, pool);
          ASSERT_TRUE(same_bits(ref, y)) << kern.name << " " << dtype_name(t) << " k=" << k << " m=" << m;
        }
      }
    }
  }
}

}  // namespace
}  // namespace nb
