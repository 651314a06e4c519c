#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace nb {

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= shape_[static_cast<size_t>(i)];
  return n;
}

Tensor Tensor::view(void* data, const int64_t* shape, int ndim, DType dtype, std::shared_ptr<void> owner,
                    Device device) {
  Tensor t;
  t.data_ = data;
  t.owner_ = std::move(owner);
  t.ndim_ = ndim;
  for (int i = 0; i < ndim; ++i) t.shape_[static_cast<size_t>(i)] = shape[i];
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::view(void* data, std::initializer_list<int64_t> shape, DType dtype, std::shared_ptr<void> owner,
                    Device device) {
  return view(data, shape.begin(), static_cast<int>(shape.size()), dtype, std::move(owner), device);
}

Tensor Tensor::empty(const int64_t* shape, int ndim, DType dtype) {
  Tensor probe = view(nullptr, shape, ndim, dtype);
  size_t bytes = probe.nbytes();
  size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, alloc);
  std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
  return view(p, shape, ndim, dtype, std::move(owner));
}

Tensor Tensor::empty(std::initializer_list<int64_t> shape, DType dtype) {
  return empty(shape.begin(), static_cast<int>(shape.size()), dtype);
}

std::string Tensor::describe() const {
  std::string s = "[";
  for (int i = 0; i < ndim_; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape_[static_cast<size_t>(i)]);
  }
  s += "] ";
  s += dtype_name(dtype_);
  return s;
}

}  // namespace nb
