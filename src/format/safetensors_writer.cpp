#include "format/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

namespace nb {
namespace {

struct DTypeSize {
  const char* name;
  int bytes;
};
// Every dtype the reference implementation defines with a whole-byte element.
constexpr DTypeSize kDTypeSizes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"U64", 8}, {"I32", 4}, {"U32", 4},
    {"I16", 2}, {"U16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

std::string os_error(const std::string& what, const std::string& path) {
  return what + " '" + path + "': " + std::strerror(errno);
}

}  // namespace

Result<int> safetensors_dtype_bytes(const std::string& dtype_name) {
  for (const DTypeSize& d : kDTypeSizes) {
    if (dtype_name == d.name) return d.bytes;
  }
  return invalid_argument("safetensors dtype '" + dtype_name +
                          "' is not known; use one of F64, F32, F16, BF16, I64, U64, I32, U32, I16, U16, I8, U8, "
                          "BOOL, F8_E4M3, F8_E5M2");
}

Result<uint64_t> safetensors_tensor_bytes(const SafetensorsTensorSpec& spec) {
  NB_ASSIGN_OR_RETURN(int elem, safetensors_dtype_bytes(spec.dtype_name));
  uint64_t n = static_cast<uint64_t>(elem);
  for (int64_t d : spec.shape) {
    if (d < 0) return invalid_argument("tensor '" + spec.name + "' has a negative dimension");
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return invalid_argument("tensor '" + spec.name + "' is too large to address");
    }
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

Result<std::string> safetensors_header(const std::vector<SafetensorsTensorSpec>& tensors,
                                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const SafetensorsTensorSpec& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") return invalid_argument("a tensor needs a name other than '" + t.name + "'");
    if (j.contains(t.name)) return invalid_argument("tensor '" + t.name + "' is listed twice");
    NB_ASSIGN_OR_RETURN(uint64_t nbytes, safetensors_tensor_bytes(t));
    if (nbytes > std::numeric_limits<uint64_t>::max() - offset) return invalid_argument("the tensors are too large to address");
    j[t.name] = {{"dtype", t.dtype_name}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = j.dump();
  // Pad with spaces so the data section (8 + header length) starts on an 8-byte boundary.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t len = text.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);  // little-endian
  return out + text;
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::create(const std::string& path,
                                                                     std::vector<SafetensorsTensorSpec> tensors,
                                                                     const std::map<std::string, std::string>& metadata) {
  NB_ASSIGN_OR_RETURN(std::string header, safetensors_header(tensors, metadata));
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;
  for (const SafetensorsTensorSpec& t : tensors) {
    NB_ASSIGN_OR_RETURN(uint64_t n, safetensors_tensor_bytes(t));
    w->data_bytes_ += n;
  }
  w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return not_found(os_error("cannot create", path) + "; check that the directory exists and is writable");
  w->header_bytes_ = header.size();
  NB_RETURN_IF_ERROR(w->write_all(header.data(), header.size()));
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

Status SafetensorsWriter::write(const void* data, uint64_t n) {
  if (fd_ < 0) return failed_precondition("'" + path_ + "' is already closed");
  if (n > data_bytes_ - written_) {
    return out_of_range("writing " + std::to_string(n) + " more bytes to '" + path_ + "' would exceed its " +
                        std::to_string(data_bytes_) + " data bytes; the data does not match the declared tensors");
  }
  NB_RETURN_IF_ERROR(write_all(data, n));
  written_ += n;
  return Status::Ok();
}

Status SafetensorsWriter::write_all(const void* data, uint64_t n) {
  const char* p = static_cast<const char*>(data);
  uint64_t left = n;
  while (left > 0) {
    // Linux writes at most ~2 GiB per call; a short write just continues.
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(left, uint64_t{1} << 30));
    const ssize_t r = ::write(fd_, p, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      return internal_error(os_error("writing", path_) + "; check the free disk space");
    }
    p += r;
    left -= static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

Status SafetensorsWriter::finish(bool sync) {
  if (fd_ < 0) return failed_precondition("'" + path_ + "' is already closed");
  if (written_ != data_bytes_) {
    ::close(fd_);
    fd_ = -1;
    return failed_precondition("'" + path_ + "' got " + std::to_string(written_) + " of its " +
                               std::to_string(data_bytes_) + " data bytes; the file is incomplete");
  }
  if (sync && ::fsync(fd_) != 0) {
    ::close(fd_);
    fd_ = -1;
    return internal_error(os_error("fsync of", path_));
  }
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return internal_error(os_error("closing", path_) + "; check the free disk space");
  return Status::Ok();
}

std::vector<std::vector<size_t>> plan_safetensors_shards(const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes) {
  // Mirrors huggingface_hub's split_state_dict_into_shards_factory, including its order: a tensor
  // over the limit is emitted as a shard at once while the current shard keeps filling.
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + sizes[i] > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += sizes[i];
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  return shards;
}

std::string safetensors_shard_name(size_t index, size_t num_shards) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", index + 1, num_shards);
  return buf;
}

std::string safetensors_index_json(uint64_t total_size, const std::map<std::string, std::string>& weight_map) {
  nlohmann::ordered_json j;
  j["metadata"] = {{"total_size", total_size}};
  j["weight_map"] = weight_map;  // std::map: sorted by tensor name, as transformers writes it
  return j.dump(2) + "\n";
}

}  // namespace nb
