// The CUDA device layer: error reporting, buffers, copies, Context. The first two tests run without a
// device too (they check how the layer refuses); the rest skip when no device is visible.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/device_check.h"
#include "gpu_test_util.h"

namespace nb {
namespace {

using gpu_test::CudaTest;

TEST(CudaDevice, ContextForMissingDeviceIsAnErrorNotACrash) {
  const int count = cuda::device_count();
  EXPECT_GE(count, 0);
  auto ctx = cuda::Context::create(count);  // one past the last device
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(ctx.status().message().find("nvidia-smi"), std::string::npos) << ctx.status().to_string();
}

TEST(CudaDevice, DescribeDevicesMatchesCount) {
  const std::string s = cuda::describe_devices();
  if (cuda::device_count() == 0) {
    EXPECT_EQ(s, "no CUDA device");
  } else {
    EXPECT_NE(s.find("sm_"), std::string::npos) << s;
  }
}

class CudaDeviceLayer : public CudaTest {};

TEST_F(CudaDeviceLayer, InfoIsPlausible) {
  const cuda::DeviceInfo& info = ctx().info();
  EXPECT_FALSE(info.name.empty());
  EXPECT_GE(info.major, 8) << "the kernels are built for sm_80 and sm_90a";
  EXPECT_GT(info.num_sms, 0);
  EXPECT_GT(info.total_bytes, size_t{1} << 30);
  EXPECT_LE(info.free_bytes, info.total_bytes);
  EXPECT_TRUE(cuda::run_axpy_selftest());
}

TEST_F(CudaDeviceLayer, CopiesRoundTripAndFillWritesEveryByte) {
  std::vector<int32_t> host(100003);
  std::iota(host.begin(), host.end(), -5000);
  cuda::DeviceBuffer a = upload(host);
  ASSERT_EQ(a.size(), host.size() * 4);
  NB_ASSERT_OK_AND_ASSIGN(cuda::DeviceBuffer b, cuda::DeviceBuffer::allocate(a.size()));
  NB_ASSERT_OK(cuda::fill_bytes(b.data(), 0x5A, b.size(), ctx().stream()));
  std::vector<uint8_t> filled(b.size());
  NB_ASSERT_OK(cuda::copy_to_host(filled.data(), b.data(), b.size(), ctx().stream()));
  NB_ASSERT_OK(ctx().synchronize());
  for (size_t i = 0; i < filled.size(); ++i) ASSERT_EQ(filled[i], 0x5A) << i;
  NB_ASSERT_OK(cuda::copy_on_device(b.data(), a.data(), a.size(), ctx().stream()));
  std::vector<int32_t> back(host.size(), 0);
  NB_ASSERT_OK(cuda::copy_to_host(back.data(), b.data(), b.size(), ctx().stream()));
  NB_ASSERT_OK(ctx().synchronize());
  EXPECT_EQ(back, host);
}

TEST_F(CudaDeviceLayer, BufferMovesTransferOwnership) {
  NB_ASSERT_OK_AND_ASSIGN(cuda::DeviceBuffer a, cuda::DeviceBuffer::allocate(4096));
  void* p = a.data();
  ASSERT_NE(p, nullptr);
  cuda::DeviceBuffer b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.size(), 4096u);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  NB_ASSERT_OK_AND_ASSIGN(cuda::DeviceBuffer c, cuda::DeviceBuffer::allocate(16));
  c = std::move(b);  // frees c's old memory
  EXPECT_EQ(c.data(), p);
  NB_ASSERT_OK_AND_ASSIGN(cuda::DeviceBuffer empty, cuda::DeviceBuffer::allocate(0));
  EXPECT_EQ(empty.data(), nullptr);
}

// An impossible allocation comes back as resource_exhausted naming the call and its site, and the
// device stays usable afterwards.
TEST_F(CudaDeviceLayer, FailedCallReportsCallAndSite) {
  auto huge = cuda::DeviceBuffer::allocate(size_t{1} << 52);  // 4 PiB
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kResourceExhausted) << huge.status().to_string();
  const std::string& m = huge.status().message();
  EXPECT_NE(m.find("cudaMalloc"), std::string::npos) << m;
  EXPECT_NE(m.find("device.cpp:"), std::string::npos) << m;
  std::vector<float> v(10, 1.f);
  cuda::DeviceBuffer ok = upload(v);
  EXPECT_EQ(ok.size(), 40u);
  NB_ASSERT_OK(ctx().synchronize());
}

}  // namespace
}  // namespace nb
