// nibble tensors: what a checkpoint holds — every tensor's name, shape, dtype and bytes — and, with
// --dump, one tensor dequantized to raw little-endian f32 (the hook the Python reference tests use).
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "format/gguf.h"
#include "format/safetensors.h"
#include "model/weights.h"
#include "tools/cli_args.h"
#include "tools/commands.h"

namespace nb::tools {
namespace {

using Json = nlohmann::json;

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
  uint64_t nbytes = 0;
  uint64_t offset = 0;
  std::string file;
  std::function<Result<Tensor>()> get;
};

struct Listing {
  std::string format;
  std::vector<Entry> entries;
  Json extra = Json::object();  // format-specific facts (GGUF version, metadata)
};

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

Json gguf_value_json(const GgufValue& v) {
  switch (v.type) {
    case GgufType::kUint8: case GgufType::kUint16: case GgufType::kUint32: case GgufType::kUint64: return v.u;
    case GgufType::kInt8: case GgufType::kInt16: case GgufType::kInt32: case GgufType::kInt64: return v.i;
    case GgufType::kBool: return v.i != 0;
    case GgufType::kFloat32: case GgufType::kFloat64: return v.f;
    case GgufType::kString: return v.str;
    case GgufType::kArray:
      if (v.array_type == GgufType::kString) return v.strs;
      if (v.array_type == GgufType::kFloat32 || v.array_type == GgufType::kFloat64) return v.floats;
      if (v.array_type == GgufType::kArray) return nullptr;  // nested arrays are validated, not stored
      if (v.array_type == GgufType::kBool) {
        Json a = Json::array();
        for (int64_t x : v.ints) a.push_back(x != 0);
        return a;
      }
      if (v.array_type == GgufType::kUint64) {
        Json a = Json::array();
        for (int64_t x : v.ints) a.push_back(static_cast<uint64_t>(x));
        return a;
      }
      return v.ints;
  }
  return nullptr;
}

Result<Listing> list_gguf(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<GgufFile> g, GgufFile::open(path));
  Listing l;
  l.format = "gguf";
  l.extra["version"] = g->version();
  l.extra["alignment"] = g->alignment();
  Json meta = Json::object();
  for (const std::string& k : g->keys()) {
    const GgufValue* v = g->find(k);
    Json e = {{"type", static_cast<int>(v->type)}, {"value", gguf_value_json(*v)}};
    if (v->type == GgufType::kArray) e["array_type"] = static_cast<int>(v->array_type);
    meta[k] = std::move(e);
  }
  l.extra["metadata"] = std::move(meta);
  for (const GgufTensorInfo& ti : g->tensors()) {
    Entry e{ti.name, ti.shape, std::string(ggml_type_name(ti.ggml_type)), ti.nbytes, ti.offset, path, nullptr};
    e.get = [g, &ti]() { return g->tensor(ti); };  // ti lives as long as g
    l.entries.push_back(std::move(e));
  }
  return l;
}

Status add_safetensors(const std::string& path, Listing* l) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> f, SafetensorsFile::open(path));
  for (const SafetensorsTensorInfo& ti : f->tensors()) {
    Entry e{ti.name, ti.shape, ti.dtype_name, ti.nbytes, ti.offset, path, nullptr};
    e.get = [f, &ti]() { return f->tensor(ti); };
    l->entries.push_back(std::move(e));
  }
  return Status::Ok();
}

void add_model_tensor(Listing* l, const std::string& name, const Tensor& t) {
  if (!t.defined()) return;
  Entry e{name, std::vector<int64_t>(t.shape().begin(), t.shape().begin() + t.ndim()),
          std::string(dtype_name(t.dtype())), t.nbytes(), 0, "", nullptr};
  e.get = [t]() -> Result<Tensor> { return t; };
  l->entries.push_back(std::move(e));
}

// Anything load_model reads (llama2.c .bin files): its tensors under the ModelWeights field names.
Result<Listing> list_model(const std::string& path) {
  NB_ASSIGN_OR_RETURN(LoadedModel m, load_model(path));
  Listing l;
  l.format = m.format;
  const ModelWeights& w = m.weights;
  add_model_tensor(&l, "tok_embeddings", w.tok_embeddings);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& lw = w.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    const std::pair<const char*, const Tensor*> parts[] = {
        {"attn_norm", &lw.attn_norm}, {"wq", &lw.wq}, {"wk", &lw.wk}, {"wv", &lw.wv}, {"wo", &lw.wo},
        {"ffn_norm", &lw.ffn_norm}, {"w_gate", &lw.w_gate}, {"w_up", &lw.w_up}, {"w_down", &lw.w_down}};
    for (const auto& [n, t] : parts) add_model_tensor(&l, p + n, *t);
  }
  add_model_tensor(&l, "final_norm", w.final_norm);
  if (!w.config.tied_embeddings) add_model_tensor(&l, "output", w.output);
  return l;
}

Result<Listing> list_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return not_found("'" + path + "' does not exist; check the path");
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> files;
    if (DIR* d = ::opendir(path.c_str()); d != nullptr) {
      while (dirent* e = ::readdir(d)) {
        if (ends_with(e->d_name, ".safetensors")) files.push_back(path + "/" + e->d_name);
      }
      ::closedir(d);
    }
    if (files.empty()) return not_found("'" + path + "' holds no *.safetensors files");
    std::sort(files.begin(), files.end());
    Listing l;
    l.format = "safetensors";
    for (const std::string& f : files) NB_RETURN_IF_ERROR(add_safetensors(f, &l));
    return l;
  }
  char magic[4] = {};
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    const size_t n = std::fread(magic, 1, 4, f);
    std::fclose(f);
    if (n == 4 && std::memcmp(magic, "GGUF", 4) == 0) return list_gguf(path);
  }
  if (ends_with(path, ".safetensors")) {
    Listing l;
    l.format = "safetensors";
    NB_RETURN_IF_ERROR(add_safetensors(path, &l));
    return l;
  }
  return list_model(path);
}

Status dump(const Entry& e, const std::string& out_path) {
  NB_ASSIGN_OR_RETURN(Tensor t, e.get());
  FILE* out = std::fopen(out_path.c_str(), "wb");
  if (out == nullptr) return not_found("cannot write '" + out_path + "': " + std::strerror(errno));
  std::vector<float> row(static_cast<size_t>(t.cols()));
  bool ok = true;
  for (int64_t r = 0; r < t.rows() && ok; ++r) {
    dequantize_row(t.dtype(), t.row(r), row.data(), t.cols());
    ok = std::fwrite(row.data(), 4, row.size(), out) == row.size();
  }
  ok = std::fclose(out) == 0 && ok;
  if (!ok) return internal_error("writing '" + out_path + "' failed; check the disk space");
  return Status::Ok();
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int run_tensors(int argc, char** argv) {
  CliArgs args("tensors", "-m FILE [--json] [--dump NAME -o OUT]");
  args.option("-m,--model", "a .gguf or .safetensors file, an HF directory, or a llama2.c .bin model");
  args.flag("--json", "print the listing (and GGUF metadata) as JSON");
  args.option("--dump", "write tensor NAME dequantized to little-endian f32 (needs -o)");
  args.option("-o,--output", "output file for --dump");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("tensors", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  if (!args.has("-m")) return fail("tensors", invalid_argument("-m FILE is required; see 'nibble tensors --help'"));
  Result<Listing> listing = list_path(args.get("-m"));
  if (!listing.ok()) return fail("tensors", listing.status());

  if (args.has("--dump")) {
    if (!args.has("-o")) return fail("tensors", invalid_argument("--dump needs -o OUT"));
    const std::string name = args.get("--dump");
    auto it = std::find_if(listing->entries.begin(), listing->entries.end(),
                           [&](const Entry& e) { return e.name == name; });
    if (it == listing->entries.end()) {
      return fail("tensors", not_found("no tensor named '" + name + "'; run without --dump to list them"));
    }
    if (Status s = dump(*it, args.get("-o")); !s.ok()) return fail("tensors", s);
    return 0;
  }
  if (args.has("--json")) {
    Json j = listing->extra;
    j["format"] = listing->format;
    Json ts = Json::array();
    for (const Entry& e : listing->entries) {
      ts.push_back({{"name", e.name}, {"shape", e.shape}, {"dtype", e.dtype}, {"bytes", e.nbytes},
                    {"offset", e.offset}, {"file", e.file}});
    }
    j["tensors"] = std::move(ts);
    const std::string text = j.dump(1, ' ', false, Json::error_handler_t::replace);
    std::printf("%s\n", text.c_str());
    return 0;
  }
  uint64_t total = 0;
  for (const Entry& e : listing->entries) {
    std::printf("%-48s %-22s %-8s %12llu\n", e.name.c_str(), shape_text(e.shape).c_str(), e.dtype.c_str(),
                static_cast<unsigned long long>(e.nbytes));
    total += e.nbytes;
  }
  std::printf("# %s: %zu tensors, %llu bytes\n", listing->format.c_str(), listing->entries.size(),
              static_cast<unsigned long long>(total));
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("tensors", run_tensors, "-m FILE: list tensors (name, shape, dtype, bytes); --dump one as f32");
}  // namespace nb::tools
