// safetensors writer: the counterpart of safetensors.h, built to stream. The header (u64 length +
// JSON, space-padded so the data section starts 8-byte aligned, as the reference writer does) is
// fixed up front from the tensor list; the data then arrives in declaration order, in chunks of any
// size, and never has to be held in memory at once. Tensors are packed back to back from offset 0
// with no gaps, which the reference reader requires.
//
// Sharding follows huggingface_hub's split_torch_state_dict_into_shards / transformers'
// save_pretrained: tensors are taken in order; one that would push the current shard past the limit
// opens a new shard; one larger than the limit gets a shard to itself. Sizes count tensor data only. Files are named
// model-00001-of-00003.safetensors and listed in model.safetensors.index.json.
// Spec: https://github.com/huggingface/safetensors#format
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb {

struct SafetensorsTensorSpec {
  std::string name;
  std::string dtype_name;      // as written in the file: "F32", "F16", "BF16", "I8", ...
  std::vector<int64_t> shape;  // outermost-first
};

// Element size of a safetensors dtype name, or an error naming the ones we know.
Result<int> safetensors_dtype_bytes(const std::string& dtype_name);
// Bytes of one tensor's data (element size x product of the shape), checked for overflow.
Result<uint64_t> safetensors_tensor_bytes(const SafetensorsTensorSpec& spec);

// The full file prefix: 8-byte little-endian JSON length, then the JSON, padded with spaces to a
// multiple of 8. `metadata` becomes "__metadata__" (omitted when empty).
Result<std::string> safetensors_header(const std::vector<SafetensorsTensorSpec>& tensors,
                                       const std::map<std::string, std::string>& metadata);

class SafetensorsWriter {
 public:
  // Creates (or truncates) `path` and writes the header.
  static Result<std::unique_ptr<SafetensorsWriter>> create(const std::string& path,
                                                           std::vector<SafetensorsTensorSpec> tensors,
                                                           const std::map<std::string, std::string>& metadata);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends data bytes; they fill the tensors in declaration order and may straddle tensors.
  // Error if more bytes arrive than the tensors hold in total.
  Status write(const void* data, uint64_t n);
  // Error unless every tensor received exactly its bytes; `sync` also fsyncs. Closes the file.
  Status finish(bool sync);

  const std::string& path() const { return path_; }
  uint64_t data_bytes() const { return data_bytes_; }  // the data section's total size
  uint64_t written() const { return written_; }        // data bytes written so far
  uint64_t file_bytes() const { return header_bytes_ + data_bytes_; }

 private:
  SafetensorsWriter() = default;
  Status write_all(const void* data, uint64_t n);  // raw, unbounded
  std::string path_;
  int fd_ = -1;
  uint64_t header_bytes_ = 0, data_bytes_ = 0, written_ = 0;
};

// Which tensors (by index into `sizes`) go into which shard; an empty input gives one empty shard.
// max_shard_bytes must be positive.
std::vector<std::vector<size_t>> plan_safetensors_shards(const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes);
// "model-00002-of-00003.safetensors" for index 1 of 3 (index is 0-based).
std::string safetensors_shard_name(size_t index, size_t num_shards);
// model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {tensor: file}}.
std::string safetensors_index_json(uint64_t total_size, const std::map<std::string, std::string>& weight_map);

}  // namespace nb
