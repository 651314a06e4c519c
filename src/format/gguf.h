// GGUF v2/v3 container reader: metadata key/values and tensor infos, with every offset and length
// checked against the file size. Tensor data stays in the mmap'd file (zero copy).
// Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mmap_file.h"
#include "core/status.h"
#include "core/tensor.h"

namespace nb {

enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};

// One metadata value. Scalars: integers in `i` (unsigned values that fit) or `u`, floats in `f`,
// bools in `i`, strings in `str`. Arrays: element type in `array_type`, elements in `strs`
// (string arrays), `ints` (integer/bool arrays) or `floats` (float arrays).
struct GgufValue {
  GgufType type = GgufType::kUint8;
  GgufType array_type = GgufType::kUint8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0.0;
  std::string str;
  std::vector<std::string> strs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // outermost-first (reversed from GGUF's ne[] order)
  uint32_t ggml_type = 0;      // raw ggml type id
  DType dtype = DType::kF32;   // only meaningful when supported == true
  bool supported = false;      // false for ggml types we do not read (K-quants, etc.)
  uint64_t offset = 0;         // absolute file offset of the data
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  static Result<std::shared_ptr<GgufFile>> open(const std::string& path);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<MappedFile>& file() const { return file_; }

  const GgufValue* find(std::string_view key) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key) const;      // any integer or bool type
  Result<double> get_float(std::string_view key) const;     // float or integer types
  // Convenience with a default when the key is absent (a wrong type is still an error).
  Result<int64_t> get_int_or(std::string_view key, int64_t fallback) const;
  Result<double> get_float_or(std::string_view key, double fallback) const;
  const std::vector<std::string>& keys() const { return key_order_; }

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // A zero-copy view of the tensor's data; error for unsupported ggml types.
  Result<Tensor> tensor(const GgufTensorInfo& info) const;

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::unordered_map<std::string, GgufValue> kv_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
  friend class GgufParser;
};

// "Q4_K", "F32", ... for a raw ggml type id ("UNKNOWN" past the table).
std::string_view ggml_type_name(uint32_t ggml_type);

}  // namespace nb
