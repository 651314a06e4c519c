// cuda::argmax vs cpu::ref::argmax on random rows with planted ties and NaNs (exact: integer output).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

class CudaArgmax : public gpu_test::CudaTest {};

TEST_F(CudaArgmax, MatchesReferenceWithTiesAndNans) {
  for (const int64_t cols : {1, 7, 255, 256, 257, 32000, 49152}) {
    const int64_t rows = 37;
    std::vector<float> x = gpu_test::random_normal(static_cast<size_t>(rows * cols), 900 + static_cast<uint32_t>(cols));
    std::mt19937 rng(gpu_test::seed(17 + static_cast<uint32_t>(cols)));
    std::uniform_int_distribution<int64_t> col(0, cols - 1);
    for (int64_t r = 0; r < rows; ++r) {
      float* row = x.data() + r * cols;
      if (r % 3 == 1) {  // a tie for the maximum at two (or more) places: the lower index must win
        const int64_t a = col(rng), b = col(rng);
        row[a] = row[b] = 100.f;
      }
      if (r % 5 == 2) row[col(rng)] = NAN;  // NaN never wins
      if (r % 7 == 3) row[0] = NAN;
      if (r == rows - 1) for (int64_t i = 0; i < cols; ++i) row[i] = -1.f;  // all equal: index 0
    }
    std::vector<int32_t> want(static_cast<size_t>(rows));
    cpu::ref::argmax({x.data(), want.data(), rows, cols});
    cuda::DeviceBuffer dx = upload(x);
    cuda::DeviceBuffer dout = poisoned(static_cast<size_t>(rows) * 4);
    NB_ASSERT_OK(cuda::argmax({dx.as<float>(), dout.as<int32_t>(), rows, cols}, ctx()));
    std::vector<int32_t> got(static_cast<size_t>(rows));
    NB_ASSERT_OK(cuda::copy_to_host(got.data(), dout.data(), got.size() * 4, ctx().stream()));
    NB_ASSERT_OK(ctx().synchronize());
    EXPECT_EQ(got, want) << "cols " << cols;
  }
}

}  // namespace
}  // namespace nb
