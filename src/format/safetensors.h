// safetensors reader: u64 little-endian header length N, N bytes of JSON
//   { "<name>": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..} }
// then the data section; offsets are relative to its start. Every offset is checked against the data
// section, every byte count against dtype x shape, and tensors may not overlap.
// Spec: https://github.com/huggingface/safetensors#format
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mmap_file.h"
#include "core/status.h"
#include "core/tensor.h"
#include "format/aligned_view.h"

namespace nb {

struct SafetensorsTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // outermost-first; may be empty (a scalar) or contain zeros
  std::string dtype_name;      // as written in the file: "F32", "BF16", "I64", ...
  DType dtype = DType::kF32;   // only meaningful when supported == true
  bool supported = false;      // F32, F16, BF16, I8, I32 with at most 4 dimensions
  uint64_t offset = 0;         // absolute file offset of the data
  uint64_t nbytes = 0;
};

class SafetensorsFile {
 public:
  static Result<std::shared_ptr<SafetensorsFile>> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<MappedFile>& file() const { return file_; }
  // "__metadata__" string entries (non-string values are skipped).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // In file-offset order.
  const std::vector<SafetensorsTensorInfo>& tensors() const { return tensors_; }
  const SafetensorsTensorInfo* find_tensor(std::string_view name) const;
  // A zero-copy view (an owned aligned copy if the data is not aligned to its element size);
  // error for unsupported dtypes.
  Result<Tensor> tensor(const SafetensorsTensorInfo& info) const;

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
  friend Status parse_safetensors_header(SafetensorsFile* f);
};

}  // namespace nb
