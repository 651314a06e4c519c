// Tensor: a typed view of memory with a shape, row-major strides and a device.
// Ownership: `owner` keeps the backing memory alive (an mmap'd file, a heap buffer, a device buffer);
// a Tensor with a null owner is a borrowed view whose lifetime the caller guarantees.
// Shapes are outermost-first like PyTorch: a linear weight is [out_features, in_features].
// For block-quantized dtypes the innermost dimension is a multiple of the block size and rows are
// contiguous; strides are then in rows, not elements, for every dimension but the last.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/dtype.h"

namespace nb {

struct GroupQuant;  // core/group_quant.h

enum class Device : uint8_t { kCPU, kCUDA };

class Tensor {
 public:
  static constexpr int kMaxDims = 4;

  Tensor() = default;
  // Allocates zeroed, 64-byte aligned host memory.
  static Tensor empty(std::initializer_list<int64_t> shape, DType dtype);
  static Tensor empty(const int64_t* shape, int ndim, DType dtype);
  // Wraps existing contiguous memory.
  static Tensor view(void* data, std::initializer_list<int64_t> shape, DType dtype,
                     std::shared_ptr<void> owner = nullptr, Device device = Device::kCPU);
  static Tensor view(void* data, const int64_t* shape, int ndim, DType dtype,
                     std::shared_ptr<void> owner = nullptr, Device device = Device::kCPU);

  bool defined() const { return data_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int ndim() const { return ndim_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i < 0 ? i + ndim_ : i)]; }
  const std::array<int64_t, kMaxDims>& shape() const { return shape_; }
  int64_t numel() const;
  // Number of rows = product of all dims but the last.
  int64_t rows() const { return ndim_ == 0 ? 1 : numel() / dim(-1); }
  int64_t cols() const { return ndim_ == 0 ? 1 : dim(-1); }
  size_t row_nbytes() const { return row_bytes(dtype_, cols()); }
  size_t nbytes() const { return static_cast<size_t>(rows()) * row_nbytes(); }

  void* data() const { return data_; }
  template <typename T>
  T* ptr() const { return static_cast<T*>(data_); }
  // Pointer to row r (contiguous tensors only).
  template <typename T = void>
  T* row(int64_t r) const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(data_) + static_cast<size_t>(r) * row_nbytes());
  }
  const std::shared_ptr<void>& owner() const { return owner_; }
  // Scales / zeros / g_idx of a kQGroup weight (core/group_quant.h); null for every other dtype.
  // Views made with Tensor::view do not carry it: slicing a kQGroup tensor is not supported.
  const GroupQuant* group_quant() const { return group_quant_.get(); }
  void set_group_quant(std::shared_ptr<const GroupQuant> q) { group_quant_ = std::move(q); }

  // "[576, 49152] q4_1"
  std::string describe() const;

 private:
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;
  std::shared_ptr<const GroupQuant> group_quant_;
  std::array<int64_t, kMaxDims> shape_{};
  int ndim_ = 0;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

}  // namespace nb
