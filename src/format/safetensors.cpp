#include "format/safetensors.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>

namespace nb {
namespace {

// The reference implementation refuses headers above 100 MB; so do we (bounds the JSON parse).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct StDType {
  const char* name;
  int bytes;  // element size
  bool supported;
  DType dtype;
};
constexpr StDType kStDTypes[] = {
    {"F32", 4, true, DType::kF32},   {"F16", 2, true, DType::kF16},   {"BF16", 2, true, DType::kBF16},
    {"I8", 1, true, DType::kI8},     {"I32", 4, true, DType::kI32},   {"BOOL", 1, false, DType::kF32},
    {"U8", 1, false, DType::kF32},   {"I16", 2, false, DType::kF32},  {"U16", 2, false, DType::kF32},
    {"U32", 4, false, DType::kF32},  {"I64", 8, false, DType::kF32},  {"U64", 8, false, DType::kF32},
    {"F64", 8, false, DType::kF32},  {"F8_E4M3", 1, false, DType::kF32}, {"F8_E5M2", 1, false, DType::kF32},
    {"F8_E8M0", 1, false, DType::kF32},
};

const StDType* find_dtype(const std::string& name) {
  for (const StDType& d : kStDTypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

}  // namespace

Status parse_safetensors_header(SafetensorsFile* f) {
  const MappedFile& file = *f->file_;
  const std::string& path = file.path();
  auto corrupt = [&](const std::string& what) {
    return data_loss("safetensors file '" + path + "' is corrupt: " + what + "; re-download or re-export it");
  };
  if (file.size() < 8) return corrupt("shorter than its 8-byte header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return corrupt("header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  }
  if (header_len > file.size() - 8) {
    return corrupt("header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(file.size()) + " bytes)");
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file.size() - data_start;
  const char* begin = reinterpret_cast<const char*>(file.data() + 8);
  nlohmann::json header = nlohmann::json::parse(begin, begin + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return corrupt("the JSON header does not parse");
  if (!header.is_object()) return corrupt("the JSON header is not an object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return corrupt("__metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (m.value().is_string()) f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { return corrupt("tensor '" + name + "' " + what); };
    if (!entry.is_object()) return bad("is not an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto offs = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return bad("has no string 'dtype'");
    if (sh == entry.end() || !sh->is_array()) return bad("has no 'shape' array");
    if (offs == entry.end() || !offs->is_array() || offs->size() != 2 || !(*offs)[0].is_number_unsigned() ||
        !(*offs)[1].is_number_unsigned()) {
      return bad("has no 'data_offsets' pair of non-negative integers");
    }
    SafetensorsTensorInfo ti;
    ti.name = name;
    ti.dtype_name = dt->get<std::string>();
    if (sh->size() > 8) return bad("has more than 8 dimensions");
    uint64_t numel = 1;
    for (const nlohmann::json& d : *sh) {
      if (!d.is_number_unsigned()) return bad("has a shape entry that is not a non-negative integer");
      const uint64_t x = d.get<uint64_t>();
      if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || __builtin_mul_overflow(numel, x, &numel)) {
        return bad("has a shape whose element count overflows");
      }
      ti.shape.push_back(static_cast<int64_t>(x));
    }
    const uint64_t b = (*offs)[0].get<uint64_t>();
    const uint64_t e = (*offs)[1].get<uint64_t>();
    if (b > e || e > data_size) {
      return bad("has data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                 "] outside the data section (" + std::to_string(data_size) + " bytes); the file may be truncated");
    }
    ti.offset = data_start + b;
    ti.nbytes = e - b;
    const StDType* info = find_dtype(ti.dtype_name);
    if (info != nullptr) {
      uint64_t expected = 0;
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(info->bytes), &expected) || expected != ti.nbytes) {
        return bad("holds " + std::to_string(ti.nbytes) + " bytes but its dtype " + ti.dtype_name +
                   " and shape need " + std::to_string(numel) + " x " + std::to_string(info->bytes));
      }
      ti.supported = info->supported && ti.shape.size() <= static_cast<size_t>(Tensor::kMaxDims);
      ti.dtype = info->dtype;
    }
    f->tensors_.push_back(std::move(ti));
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
            });
  for (size_t k = 0; k < f->tensors_.size(); ++k) {
    const SafetensorsTensorInfo& t = f->tensors_[k];
    // Overlapping tensors would alias each other's bytes: the reference writer never produces them.
    if (k > 0) {
      const SafetensorsTensorInfo& prev = f->tensors_[k - 1];
      if (t.offset < prev.offset + prev.nbytes) {
        return corrupt("tensors '" + prev.name + "' and '" + t.name + "' overlap");
      }
    }
    f->tensor_index_.emplace(t.name, k);  // JSON object keys are unique after parsing
  }
  return Status::Ok();
}

Result<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->file_ = std::move(file);
  // nlohmann::json may still throw (bad_alloc, or type errors we did not anticipate): this is the boundary.
  try {
    NB_RETURN_IF_ERROR(parse_safetensors_header(f.get()));
  } catch (const std::exception& e) {
    return data_loss("safetensors file '" + path + "' has an unreadable header (" + e.what() +
                     "); re-download or re-export it");
  }
  return f;
}

const SafetensorsTensorInfo* SafetensorsFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<Tensor> SafetensorsFile::tensor(const SafetensorsTensorInfo& info) const {
  if (!info.supported) {
    return unimplemented("tensor '" + info.name + "' in '" + path() + "' has dtype " + info.dtype_name + " and " +
                         std::to_string(info.shape.size()) +
                         " dimensions; nibble reads F32, F16, BF16, I8 and I32 tensors of up to 4 dimensions");
  }
  if (!file_->contains(info.offset, info.nbytes)) {
    return out_of_range("tensor '" + info.name + "' lies outside '" + path() + "'");
  }
  const int64_t scalar_shape[1] = {1};
  const bool scalar = info.shape.empty();
  return view_or_aligned_copy(file_->data() + info.offset, info.nbytes, scalar ? scalar_shape : info.shape.data(),
                              scalar ? 1 : static_cast<int>(info.shape.size()), info.dtype, file_);
}

}  // namespace nb
