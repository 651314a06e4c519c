// Shared by the CUDA attention tests (test_cuda_attention.cpp, test_cuda_kv_quant.cpp): after a batch
// has been checked through cuda::batch_attention, the decode step's kernel (cuda::decode_attention,
// decode.cu: what the model runs for decode batches) gets the same batch wherever it applies, against
// the same reference, and the fixture counts those checks so a test can assert the kernel really ran.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "gpu_test_util.h"

namespace nb::gpu_test {

class AttentionTest : public CudaTest {
 protected:
  // p: the batch as batch_attention ran it (device pointers); want: the reference output of n values.
  void check_decode_kernel(BatchAttentionParams p, size_t n, DType act, const std::vector<float>& want,
                           const std::string& what) {
    if (!cuda::decode_attention_applies(p)) return;
    cuda::DeviceBuffer d_out = poisoned(n * elem_bytes(act));
    p.out = d_out.as<float>();
    NB_ASSERT_OK(cuda::decode_attention(p, ctx()));
    EXPECT_TRUE(all_close(download_act(d_out, n, act), want, act_tol(act, 3e-5))) << what << " (decode_attention)";
    ++decode_checks_;
  }
  int decode_checks_ = 0;  // checks that ran decode_attention
};

}  // namespace nb::gpu_test
