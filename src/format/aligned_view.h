// Tensor views into mapped files. Element loads need natural alignment (f32: 4, f16/bf16 and the f16
// scales of GGUF blocks: 2); a file may place data at an odd offset, and then we copy instead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace nb {

// Wraps [data, data + nbytes) as a tensor kept alive by `owner`, or copies it into aligned heap memory
// when `data` is not aligned for `dtype`. nbytes must equal the tensor's byte size.
Tensor view_or_aligned_copy(const uint8_t* data, size_t nbytes, const int64_t* shape, int ndim, DType dtype,
                            std::shared_ptr<void> owner);

}  // namespace nb
