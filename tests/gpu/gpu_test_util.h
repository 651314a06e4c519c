// Helpers for the CUDA op tests: a fixture that skips without a device, host <-> device transfers of
// activations in any act dtype, NaN-poisoned outputs, and an all-elements closeness check.
//
// Method (every op test): draw random inputs (seeded; NIBBLE_TEST_SEED shifts every seed), round them
// to the activation dtype, run the CPU reference (nb::cpu::ref::*, f32/double) on the rounded values,
// run the kernel on the same values into an output pre-filled with 0xFF bytes (NaN in f32, f16 and
// bf16), and check EVERY element: finite, and |got - want| <= rel * |want| + abs_i, plus the norm
// ratio ||got - want|| / ||want||. Tolerances by dtype (justified per op where they are used):
//   f32  kernels compute in f32 against a double reference: rel 1e-5 (a few ulp of f32 arithmetic
//        over the reduction lengths used, far below any indexing bug, which is O(1) relative).
//   f16  one rounding of the output (2^-11 = 4.9e-4 relative) on top of f32 arithmetic: rel 1e-3.
//   bf16 one rounding of the output (2^-8 = 3.9e-3 relative): rel 8e-3.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "core/dtype.h"

#define NB_ASSERT_OK(expr)                                 \
  do {                                                     \
    const ::nb::Status nb_s_ = (expr);                     \
    ASSERT_TRUE(nb_s_.ok()) << #expr << ": " << nb_s_.to_string(); \
  } while (0)

#define NB_ASSERT_OK_AND_ASSIGN(lhs, expr)                                               \
  auto NB_CONCAT(nb_r_, __LINE__) = (expr);                                              \
  ASSERT_TRUE(NB_CONCAT(nb_r_, __LINE__).ok()) << #expr << ": "                        \
                                               << NB_CONCAT(nb_r_, __LINE__).status().to_string(); \
  lhs = std::move(NB_CONCAT(nb_r_, __LINE__)).value()

namespace nb::gpu_test {

// A model file for the GPU tests: NIBBLE_GPU_MODELS/<name>, or gpu_carry/models under the source tree
// (scripts/gpu.sh fills it).
inline std::string model_path(const std::string& name) {
  const char* env = std::getenv("NIBBLE_GPU_MODELS");
  return (env != nullptr ? std::string(env) : std::string(NIBBLE_SOURCE_DIR) + "/gpu_carry/models") + "/" + name;
}

// Seeds are fixed per case (deterministic runs); NIBBLE_TEST_SEED=<n> draws a fresh set.
inline uint32_t seed(uint32_t base) {
  const char* env = std::getenv("NIBBLE_TEST_SEED");
  return base * 2654435761u + (env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) : 0u);
}

inline std::vector<float> random_normal(size_t n, uint32_t s, float stddev = 1.f) {
  std::mt19937 rng(seed(s));
  std::normal_distribution<float> nd(0.f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

inline size_t elem_bytes(DType t) { return t == DType::kF32 ? 4 : 2; }

inline float round_to(DType t, float v) {
  if (t == DType::kF16) return fp16_to_fp32(fp32_to_fp16(v));
  if (t == DType::kBF16) return bf16_to_fp32(fp32_to_bf16(v));
  return v;
}
inline void round_all(std::vector<float>& v, DType t) {
  for (float& x : v) x = round_to(t, x);
}

// f32 values -> bytes of dtype t (f32/f16/bf16), and back.
inline std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * elem_bytes(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = t == DType::kF16 ? fp32_to_fp16(v[i]) : fp32_to_bf16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}
inline std::vector<float> decode(const std::vector<uint8_t>& bytes, DType t) {
  std::vector<float> out(bytes.size() / elem_bytes(t));
  for (size_t i = 0; i < out.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      out[i] = t == DType::kF16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
    }
  }
  return out;
}

// Skips every test of the suite when no CUDA device is visible; otherwise one Context per test.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    auto c = cuda::Context::create(0, size_t{256} << 20);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ctx_ = std::move(c).value();
  }
  cuda::Context& ctx() { return *ctx_; }

  // Device copy of `nbytes` host bytes.
  cuda::DeviceBuffer upload_bytes(const void* src, size_t nbytes) {
    auto b = cuda::DeviceBuffer::allocate(nbytes);
    EXPECT_TRUE(b.ok()) << b.status().to_string();
    if (!b.ok()) return {};
    const Status s = cuda::copy_to_device(b->data(), src, nbytes, ctx().stream());
    EXPECT_TRUE(s.ok()) << s.to_string();
    const Status s2 = ctx().synchronize();  // the host vector may go away right after
    EXPECT_TRUE(s2.ok()) << s2.to_string();
    return std::move(b).value();
  }
  template <typename T>
  cuda::DeviceBuffer upload(const std::vector<T>& v) {
    return upload_bytes(v.data(), v.size() * sizeof(T));
  }
  // Activations: f32 values encoded as dtype t on the device.
  cuda::DeviceBuffer upload_act(const std::vector<float>& v, DType t) { return upload(encode(v, t)); }

  // An output buffer whose every byte is 0xFF: NaN in f32, f16 and bf16 alike, so an element the
  // kernel does not write fails the finiteness check.
  cuda::DeviceBuffer poisoned(size_t nbytes) {
    auto b = cuda::DeviceBuffer::allocate(nbytes);
    EXPECT_TRUE(b.ok()) << b.status().to_string();
    if (!b.ok()) return {};
    const Status s = cuda::fill_bytes(b->data(), 0xFF, nbytes, ctx().stream());
    EXPECT_TRUE(s.ok()) << s.to_string();
    return std::move(b).value();
  }

  // Synchronizes (surfacing kernel faults), then reads n elements of dtype t as f32.
  std::vector<float> download_act(const cuda::DeviceBuffer& b, size_t n, DType t) {
    std::vector<uint8_t> bytes(n * elem_bytes(t));
    const Status s = cuda::copy_to_host(bytes.data(), b.data(), bytes.size(), ctx().stream());
    EXPECT_TRUE(s.ok()) << s.to_string();
    const Status s2 = ctx().synchronize();
    EXPECT_TRUE(s2.ok()) << s2.to_string();
    return decode(bytes, t);
  }

 private:
  std::unique_ptr<cuda::Context> ctx_;
};

struct Tol {
  double rel;         // relative to |want|
  double abs;         // absolute, multiplied by scale[i] when a scale vector is given
  double norm;        // bound on ||got - want|| / ||want||
  double floor = 0;   // absolute, for results that underflow to subnormals in the output dtype
};
inline double dtype_rel(DType t) { return t == DType::kF32 ? 1e-5 : t == DType::kF16 ? 1e-3 : 8e-3; }
// f16 subnormals (|x| < 6.1e-5) are spaced 2^-24 = 6e-8 apart: rounding there is not relative.
inline double dtype_floor(DType t) { return t == DType::kF16 ? 6e-8 : 0.0; }
// The usual tolerance for outputs in act dtype: rel and norm by dtype (norm at least 1e-5), `abs`
// on top (times scale[i] where given).
inline Tol act_tol(DType t, double abs = 0) { return Tol{dtype_rel(t), abs, std::max(dtype_rel(t), 1e-5), dtype_floor(t)}; }

// Every element finite and within rel * |want| + abs * scale_i; and the norm ratio within tol.norm.
inline ::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& want, Tol tol,
                                            const std::vector<float>* scale = nullptr) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  size_t num_bad = 0, first_bad = 0;
  double max_err = 0, err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double bound = tol.rel * std::fabs(w) + tol.abs * (scale != nullptr ? (*scale)[i] : 1.0) + tol.floor;
    const double e = std::fabs(g - w);
    if (!std::isfinite(g) || !std::isfinite(w) || !(e <= bound)) {
      if (num_bad++ == 0) first_bad = i;
    }
    if (std::isfinite(e)) max_err = std::max(max_err, e);
    err2 += (g - w) * (g - w);
    ref2 += w * w;
  }
  // The floor enters the norm check too: sqrt(sum err^2) <= norm * ||want|| + floor * sqrt(n).
  const double ratio = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  const bool norm_ok = std::sqrt(err2) <= tol.norm * std::sqrt(ref2) + tol.floor * std::sqrt(double(got.size()));
  if (num_bad > 0 || !norm_ok) {
    auto f = ::testing::AssertionFailure();
    f << num_bad << " of " << got.size() << " elements out of tolerance (rel " << tol.rel << ", abs " << tol.abs
      << "); max |err| " << max_err << ", norm ratio " << ratio << " (bound " << tol.norm << ")";
    if (num_bad > 0) f << "; first at " << first_bad << ": got " << got[first_bad] << " want " << want[first_bad];
    return f;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace nb::gpu_test
