#include "format/aligned_view.h"

#include <algorithm>
#include <cstring>

namespace nb {
namespace {
size_t dtype_alignment(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kI8: case DType::kI4: return 1;
    default: return 2;  // f16/bf16 elements and the f16 scales of the GGUF blocks
  }
}
}  // namespace

Tensor view_or_aligned_copy(const uint8_t* data, size_t nbytes, const int64_t* shape, int ndim, DType dtype,
                            std::shared_ptr<void> owner) {
  if (reinterpret_cast<uintptr_t>(data) % dtype_alignment(dtype) == 0) {
    return Tensor::view(const_cast<uint8_t*>(data), shape, ndim, dtype, std::move(owner));
  }
  Tensor t = Tensor::empty(shape, ndim, dtype);
  std::memcpy(t.data(), data, std::min(nbytes, t.nbytes()));
  return t;
}

}  // namespace nb
