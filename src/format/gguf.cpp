// GGUF reader. Layout (little-endian):
//   u32 magic "GGUF", u32 version (2 or 3), u64 tensor_count, u64 kv_count,
//   kv_count x { string key, u32 type, value },
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
//   padding to general.alignment, then the data section (tensor offsets are relative to it).
// Every count is bounded by the bytes left in the file before anything is allocated, so a hostile
// header fails with a Status instead of reserving gigabytes.
#include "format/gguf.h"

#include "format/aligned_view.h"

#include <cstring>
#include <limits>

namespace nb {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;            // nested arrays deeper than this are rejected
constexpr uint32_t kMaxDims = 4;             // GGML_MAX_DIMS
constexpr uint64_t kMaxTensors = 1u << 24;
constexpr uint64_t kMaxKeys = 1u << 24;

// ggml type table: block size (elements) and block bytes. {0, 0} marks ids ggml removed or never
// used; those are rejected like ggml does. Sizes follow ggml's type_traits.
struct GgmlTypeInfo {
  const char* name;
  int64_t block_size;
  int64_t block_bytes;
};
constexpr GgmlTypeInfo kGgmlTypes[] = {
    {"F32", 1, 4},       {"F16", 1, 2},      {"Q4_0", 32, 18},   {"Q4_1", 32, 20},   {"Q4_2", 0, 0},
    {"Q4_3", 0, 0},      {"Q5_0", 32, 22},   {"Q5_1", 32, 24},   {"Q8_0", 32, 34},   {"Q8_1", 32, 36},
    {"Q2_K", 256, 84},   {"Q3_K", 256, 110}, {"Q4_K", 256, 144}, {"Q5_K", 256, 176}, {"Q6_K", 256, 210},
    {"Q8_K", 256, 292},  {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98},
    {"IQ1_S", 256, 50},  {"IQ4_NL", 32, 18}, {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},
    {"IQ4_XS", 256, 136}, {"I8", 1, 1},      {"I16", 1, 2},      {"I32", 1, 4},      {"I64", 1, 8},
    {"F64", 1, 8},       {"IQ1_M", 256, 56}, {"BF16", 1, 2},     {"Q4_0_4_4", 0, 0}, {"Q4_0_4_8", 0, 0},
    {"Q4_0_8_8", 0, 0},  {"TQ1_0", 256, 54}, {"TQ2_0", 256, 66}, {"IQ4_NL_4_4", 0, 0},
    {"IQ4_NL_4_8", 0, 0}, {"IQ4_NL_8_8", 0, 0}, {"MXFP4", 32, 17},
};
constexpr uint32_t kNumGgmlTypes = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

bool ggml_to_dtype(uint32_t ggml_type, DType* out) {
  switch (ggml_type) {
    case 0: *out = DType::kF32; return true;
    case 1: *out = DType::kF16; return true;
    case 2: *out = DType::kQ4_0; return true;
    case 3: *out = DType::kQ4_1; return true;
    case 8: *out = DType::kQ8_0; return true;
    case 30: *out = DType::kBF16; return true;
    default: return false;
  }
}

// Minimum bytes one element of a metadata value of this type occupies in the file.
uint64_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kBool: return 1;
    case GgufType::kUint16: case GgufType::kInt16: return 2;
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kFloat32: return 4;
    case GgufType::kUint64: case GgufType::kInt64: case GgufType::kFloat64: return 8;
    case GgufType::kString: return 8;
    case GgufType::kArray: return 12;
  }
  return 1;
}

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kUint16: case GgufType::kInt16:
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kUint64: case GgufType::kInt64:
    case GgufType::kBool:
      return true;
    default:
      return false;
  }
}
bool is_float(GgufType t) { return t == GgufType::kFloat32 || t == GgufType::kFloat64; }

}  // namespace

// Cursor over the mapped bytes; every read checks the remaining length first.
class GgufParser {
 public:
  explicit GgufParser(const MappedFile& f) : data_(f.data()), size_(f.size()), path_(f.path()) {}

  Status parse(GgufFile* g);

 private:
  uint64_t remaining() const { return size_ - pos_; }

  Status truncated(const std::string& what) const {
    return data_loss("GGUF file '" + path_ + "' is truncated or corrupt: " + what + " at byte " +
                     std::to_string(pos_) + " runs past the end of the file (" + std::to_string(size_) +
                     " bytes); re-download or re-convert the model");
  }
  Status corrupt(const std::string& what) const {
    return data_loss("GGUF file '" + path_ + "' is corrupt: " + what + "; re-download or re-convert the model");
  }

  template <typename T>
  Status read(T* out, const char* what) {
    if (remaining() < sizeof(T)) return truncated(what);
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status read_string(std::string* out, const char* what) {
    uint64_t len = 0;
    NB_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining()) {
      return truncated(std::string(what) + " (length " + std::to_string(len) + ")");
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return Status::Ok();
  }

  Status skip_string(const char* what) {
    uint64_t len = 0;
    NB_RETURN_IF_ERROR(read(&len, what));
    if (len > remaining()) return truncated(std::string(what) + " (length " + std::to_string(len) + ")");
    pos_ += len;
    return Status::Ok();
  }

  Status read_scalar(GgufType t, GgufValue* v);
  Status read_array(GgufValue* v, int depth);
  Status skip_array(int depth);
  Status read_tensor_info(GgufTensorInfo* ti);

  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string path_;
};

Status GgufParser::read_scalar(GgufType t, GgufValue* v) {
  v->type = t;
  // Reads one little-endian value of type T into the integer (I) or float (F) slot.
  auto read_int = [&](auto zero, const char* what) -> Status {
    auto x = zero;
    NB_RETURN_IF_ERROR(read(&x, what));
    v->i = static_cast<int64_t>(x);
    v->u = x >= 0 ? static_cast<uint64_t>(x) : 0;
    return Status::Ok();
  };
  switch (t) {
    case GgufType::kUint8: return read_int(uint8_t{0}, "u8 value");
    case GgufType::kInt8: return read_int(int8_t{0}, "i8 value");
    case GgufType::kUint16: return read_int(uint16_t{0}, "u16 value");
    case GgufType::kInt16: return read_int(int16_t{0}, "i16 value");
    case GgufType::kUint32: return read_int(uint32_t{0}, "u32 value");
    case GgufType::kInt32: return read_int(int32_t{0}, "i32 value");
    case GgufType::kInt64: return read_int(int64_t{0}, "i64 value");
    case GgufType::kUint64: {
      uint64_t x = 0;
      NB_RETURN_IF_ERROR(read(&x, "u64 value"));
      v->u = x;
      // Values above INT64_MAX live only in `u`; get_int reports them as out of range.
      v->i = x <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? static_cast<int64_t>(x) : 0;
      return Status::Ok();
    }
    case GgufType::kFloat32: {
      float x = 0;
      NB_RETURN_IF_ERROR(read(&x, "f32 value"));
      v->f = x;
      return Status::Ok();
    }
    case GgufType::kFloat64: return read(&v->f, "f64 value");
    case GgufType::kBool: {
      uint8_t x = 0;
      NB_RETURN_IF_ERROR(read(&x, "bool value"));
      // ggml reads bools as int8 and treats any nonzero byte as true; so do we.
      v->i = x != 0;
      v->u = x != 0;
      return Status::Ok();
    }
    case GgufType::kString: return read_string(&v->str, "string value");
    case GgufType::kArray: break;
  }
  return internal_error("read_scalar called on an array");
}

Status GgufParser::skip_array(int depth) {
  if (depth > kMaxArrayDepth) return corrupt("metadata arrays nested deeper than " + std::to_string(kMaxArrayDepth));
  uint32_t raw_type = 0;
  uint64_t n = 0;
  NB_RETURN_IF_ERROR(read(&raw_type, "array element type"));
  NB_RETURN_IF_ERROR(read(&n, "array length"));
  if (!valid_type(raw_type)) return corrupt("unknown array element type " + std::to_string(raw_type));
  const auto t = static_cast<GgufType>(raw_type);
  if (n > remaining() / min_value_bytes(t)) return truncated("array of " + std::to_string(n) + " elements");
  if (t == GgufType::kArray) {
    for (uint64_t k = 0; k < n; ++k) NB_RETURN_IF_ERROR(skip_array(depth + 1));
  } else if (t == GgufType::kString) {
    for (uint64_t k = 0; k < n; ++k) NB_RETURN_IF_ERROR(skip_string("string array element"));
  } else {
    pos_ += n * min_value_bytes(t);  // bounded above: n * size <= remaining()
  }
  return Status::Ok();
}

Status GgufParser::read_array(GgufValue* v, int depth) {
  v->type = GgufType::kArray;
  uint32_t raw_type = 0;
  uint64_t n = 0;
  const uint64_t start = pos_;
  NB_RETURN_IF_ERROR(read(&raw_type, "array element type"));
  NB_RETURN_IF_ERROR(read(&n, "array length"));
  if (!valid_type(raw_type)) return corrupt("unknown array element type " + std::to_string(raw_type));
  const auto t = static_cast<GgufType>(raw_type);
  v->array_type = t;
  // Each element takes at least min_value_bytes in the file: this bounds the reservation below.
  if (n > remaining() / min_value_bytes(t)) return truncated("array of " + std::to_string(n) + " elements");
  if (t == GgufType::kArray) {
    // Arrays of arrays: nothing in a Llama model needs them; validate and skip.
    pos_ = start;
    return skip_array(depth);
  }
  if (t == GgufType::kString) {
    v->strs.reserve(static_cast<size_t>(n));
    for (uint64_t k = 0; k < n; ++k) {
      v->strs.emplace_back();
      NB_RETURN_IF_ERROR(read_string(&v->strs.back(), "string array element"));
    }
  } else if (is_float(t)) {
    v->floats.reserve(static_cast<size_t>(n));
    GgufValue e;
    for (uint64_t k = 0; k < n; ++k) {
      NB_RETURN_IF_ERROR(read_scalar(t, &e));
      v->floats.push_back(e.f);
    }
  } else {
    v->ints.reserve(static_cast<size_t>(n));
    GgufValue e;
    for (uint64_t k = 0; k < n; ++k) {
      NB_RETURN_IF_ERROR(read_scalar(t, &e));
      // u64 elements above INT64_MAX wrap: no Llama metadata array holds such values.
      v->ints.push_back(t == GgufType::kUint64 ? static_cast<int64_t>(e.u) : e.i);
    }
  }
  return Status::Ok();
}

Status GgufParser::read_tensor_info(GgufTensorInfo* ti) {
  NB_RETURN_IF_ERROR(read_string(&ti->name, "tensor name"));
  uint32_t n_dims = 0;
  NB_RETURN_IF_ERROR(read(&n_dims, "tensor dimension count"));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return corrupt("tensor '" + ti->name + "' has " + std::to_string(n_dims) + " dimensions (expected 1 to 4)");
  }
  std::vector<int64_t> ne(n_dims);
  int64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t x = 0;
    NB_RETURN_IF_ERROR(read(&x, "tensor dimension"));
    if (x == 0 || x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return corrupt("tensor '" + ti->name + "' has invalid dimension " + std::to_string(x));
    }
    ne[d] = static_cast<int64_t>(x);
    if (__builtin_mul_overflow(numel, ne[d], &numel)) {
      return corrupt("tensor '" + ti->name + "' has an element count that overflows 64 bits");
    }
  }
  ti->shape.assign(ne.rbegin(), ne.rend());  // GGUF ne[0] is innermost; we store outermost-first
  NB_RETURN_IF_ERROR(read(&ti->ggml_type, "tensor type"));
  uint64_t rel_offset = 0;
  NB_RETURN_IF_ERROR(read(&rel_offset, "tensor offset"));
  ti->offset = rel_offset;  // made absolute once the data section start is known

  if (ti->ggml_type >= kNumGgmlTypes || kGgmlTypes[ti->ggml_type].block_size == 0) {
    return corrupt("tensor '" + ti->name + "' has unknown ggml type " + std::to_string(ti->ggml_type));
  }
  const GgmlTypeInfo& info = kGgmlTypes[ti->ggml_type];
  if (ne[0] % info.block_size != 0) {
    return corrupt("tensor '" + ti->name + "' of type " + info.name + " has innermost dimension " +
                   std::to_string(ne[0]) + ", not a multiple of its block size " + std::to_string(info.block_size));
  }
  int64_t nbytes = 0;
  if (__builtin_mul_overflow(numel / info.block_size, info.block_bytes, &nbytes)) {
    return corrupt("tensor '" + ti->name + "' has a byte size that overflows 64 bits");
  }
  ti->nbytes = static_cast<uint64_t>(nbytes);
  ti->supported = ggml_to_dtype(ti->ggml_type, &ti->dtype);
  return Status::Ok();
}

Status GgufParser::parse(GgufFile* g) {
  uint32_t magic = 0;
  NB_RETURN_IF_ERROR(read(&magic, "magic"));
  if (magic != kGgufMagic) {
    return invalid_argument("'" + path_ + "' is not a GGUF file (the first 4 bytes are not \"GGUF\")");
  }
  NB_RETURN_IF_ERROR(read(&g->version_, "version"));
  if (g->version_ == 1) {
    return unimplemented("'" + path_ + "' is GGUF v1, which is not supported; re-convert it with a recent llama.cpp");
  }
  if (g->version_ != 2 && g->version_ != 3) {
    const bool swapped = (g->version_ & 0xffff) == 0 && g->version_ != 0;
    return unimplemented("'" + path_ + "' has GGUF version " + std::to_string(g->version_) +
                         (swapped ? " (a big-endian file?)" : "") +
                         "; only little-endian GGUF v2 and v3 are supported");
  }
  uint64_t num_tensors = 0, num_kv = 0;
  NB_RETURN_IF_ERROR(read(&num_tensors, "tensor count"));
  NB_RETURN_IF_ERROR(read(&num_kv, "metadata count"));
  // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least 8 + 4 + 8 + 4 + 8.
  if (num_kv > kMaxKeys || num_kv > remaining() / 13) {
    return corrupt("metadata count " + std::to_string(num_kv) + " does not fit in the file");
  }
  if (num_tensors > kMaxTensors || num_tensors > remaining() / 32) {
    return corrupt("tensor count " + std::to_string(num_tensors) + " does not fit in the file");
  }

  g->kv_.reserve(static_cast<size_t>(num_kv));
  g->key_order_.reserve(static_cast<size_t>(num_kv));
  for (uint64_t k = 0; k < num_kv; ++k) {
    std::string key;
    NB_RETURN_IF_ERROR(read_string(&key, "metadata key"));
    uint32_t raw_type = 0;
    NB_RETURN_IF_ERROR(read(&raw_type, "metadata value type"));
    if (!valid_type(raw_type)) {
      return corrupt("metadata key '" + key + "' has unknown value type " + std::to_string(raw_type));
    }
    GgufValue v;
    const auto t = static_cast<GgufType>(raw_type);
    if (t == GgufType::kArray) {
      NB_RETURN_IF_ERROR(read_array(&v, 1));
    } else {
      NB_RETURN_IF_ERROR(read_scalar(t, &v));
    }
    if (g->kv_.count(key) != 0) return corrupt("duplicate metadata key '" + key + "'");
    g->key_order_.push_back(key);
    g->kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = g->find("general.alignment")) {
    if (!is_integer(a->type) || a->type == GgufType::kBool || a->i <= 0 || (a->i & (a->i - 1)) != 0 ||
        a->i > (1 << 30)) {
      return corrupt("general.alignment must be a positive power of two integer");
    }
    g->alignment_ = static_cast<uint64_t>(a->i);
  }

  g->tensors_.reserve(static_cast<size_t>(num_tensors));
  g->tensor_index_.reserve(static_cast<size_t>(num_tensors));
  for (uint64_t k = 0; k < num_tensors; ++k) {
    GgufTensorInfo ti;
    NB_RETURN_IF_ERROR(read_tensor_info(&ti));
    if (g->tensor_index_.count(ti.name) != 0) return corrupt("duplicate tensor name '" + ti.name + "'");
    g->tensor_index_.emplace(ti.name, g->tensors_.size());
    g->tensors_.push_back(std::move(ti));
  }

  // The data section starts at the next multiple of the alignment (pos_ <= size_ < 2^63: no overflow).
  const uint64_t data_start = (pos_ + g->alignment_ - 1) / g->alignment_ * g->alignment_;
  for (GgufTensorInfo& ti : g->tensors_) {
    if (ti.offset % g->alignment_ != 0) {
      return corrupt("tensor '" + ti.name + "' data offset " + std::to_string(ti.offset) +
                     " is not a multiple of the alignment " + std::to_string(g->alignment_));
    }
    if (ti.offset > size_ || data_start > size_ - ti.offset || ti.nbytes > size_ - data_start - ti.offset) {
      return data_loss("GGUF file '" + path_ + "' is truncated or corrupt: tensor '" + ti.name + "' (" +
                       std::to_string(ti.nbytes) + " bytes at data offset " + std::to_string(ti.offset) +
                       ") lies past the end of the file (" + std::to_string(size_) +
                       " bytes); re-download or re-convert the model");
    }
    ti.offset += data_start;
  }
  return Status::Ok();
}

Result<std::shared_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::open(path));
  std::shared_ptr<GgufFile> g(new GgufFile());
  g->file_ = file;
  GgufParser parser(*file);
  NB_RETURN_IF_ERROR(parser.parse(g.get()));
  return g;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {
Status missing_key(std::string_view key, const std::string& path) {
  return not_found("GGUF metadata key '" + std::string(key) + "' is missing in '" + path +
                   "'; the file may come from an unsupported converter");
}
Status wrong_type(std::string_view key, const char* expected, const std::string& path) {
  return invalid_argument("GGUF metadata key '" + std::string(key) + "' in '" + path + "' is not " + expected);
}
}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing_key(key, path());
  if (v->type != GgufType::kString) return wrong_type(key, "a string", path());
  return v->str;
}

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing_key(key, path());
  if (!is_integer(v->type)) return wrong_type(key, "an integer", path());
  if (v->type == GgufType::kUint64 && v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return invalid_argument("GGUF metadata key '" + std::string(key) + "' value " + std::to_string(v->u) +
                            " does not fit in a signed 64-bit integer");
  }
  return v->i;
}

Result<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return missing_key(key, path());
  if (is_float(v->type)) return v->f;
  if (v->type == GgufType::kBool) return wrong_type(key, "a number", path());
  if (is_integer(v->type)) {
    return v->type == GgufType::kUint64 ? static_cast<double>(v->u) : static_cast<double>(v->i);
  }
  return wrong_type(key, "a number", path());
}

Result<int64_t> GgufFile::get_int_or(std::string_view key, int64_t fallback) const {
  if (find(key) == nullptr) return fallback;
  return get_int(key);
}

Result<double> GgufFile::get_float_or(std::string_view key, double fallback) const {
  if (find(key) == nullptr) return fallback;
  return get_float(key);
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<Tensor> GgufFile::tensor(const GgufTensorInfo& info) const {
  if (!info.supported) {
    const char* type_name = info.ggml_type < kNumGgmlTypes ? kGgmlTypes[info.ggml_type].name : "unknown";
    return unimplemented("tensor '" + info.name + "' has ggml type " + type_name + " (" +
                         std::to_string(info.ggml_type) +
                         "), which nibble does not read; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1");
  }
  if (!file_->contains(info.offset, info.nbytes)) {
    return out_of_range("tensor '" + info.name + "' lies outside '" + path() + "'");
  }
  return view_or_aligned_copy(file_->data() + info.offset, info.nbytes, info.shape.data(),
                              static_cast<int>(info.shape.size()), info.dtype, file_);
}

std::string_view ggml_type_name(uint32_t ggml_type) {
  if (ggml_type >= kNumGgmlTypes) return "UNKNOWN";
  return kGgmlTypes[ggml_type].name;
}

}  // namespace nb
