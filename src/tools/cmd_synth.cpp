// nibble synth: a random-weight model of exactly a real model's shape, as an HF directory
// (config.json, model.safetensors or shards + index, a tokenizer) that nibble and transformers both
// load, so full-size models can be measured without downloading weights. The weights are streamed
// to disk tensor by tensor: generation of the next chunk (all threads) overlaps the write of the
// previous one, so memory stays at two chunks and the time is the disk's.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <map>

#include "core/mmap_file.h"
#include "core/thread_pool.h"
#include "format/safetensors_writer.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli_args.h"
#include "tools/commands.h"
#include "tools/synth_model.h"
#include "tools/synth_tokenizer.h"

namespace nb::tools {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000;  // transformers' save_pretrained default "5GB"
constexpr uint64_t kChunkBytes = 32ull << 20;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Status write_text_file(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".partial";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return not_found("cannot create '" + tmp.string() + "'; check that the directory is writable");
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) return internal_error("writing '" + tmp.string() + "' failed; check the free disk space");
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return internal_error("cannot rename '" + tmp.string() + "': " + ec.message());
  return Status::Ok();
}

bool is_model_file(const std::string& n) {
  return n == "config.json" || n == "model.safetensors.index.json" || n == "tokenizer.json" ||
         n == "tokenizer.model" || n == "tokenizer_config.json" ||
         (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) ||
         (n.size() > 8 && n.compare(n.size() - 8, 8, ".partial") == 0);
}

// The output directory, created if needed. Files of an earlier model there would mix with ours
// (a stale index or tokenizer.json wins over what we write), so they are an error unless --force.
Status prepare_dir(const fs::path& dir, bool force) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) return not_found("cannot create directory '" + dir.string() + "': " + ec.message());
  std::vector<fs::path> old;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec) && is_model_file(e.path().filename().string())) old.push_back(e.path());
  }
  if (old.empty()) return Status::Ok();
  if (!force) {
    return failed_precondition("'" + dir.string() + "' already holds model files (" + old[0].filename().string() +
                               ", ...); pass --force to replace them or choose another -o");
  }
  for (const fs::path& p : old) {
    if (!fs::remove(p, ec) || ec) return internal_error("cannot remove '" + p.string() + "': " + ec.message());
  }
  return Status::Ok();
}

// --tokenizer FILE: copied under the name the loader looks for, with its tokenizer_config.json.
Status copy_tokenizer(const std::string& file, const SynthPreset& p, const fs::path& dir) {
  NB_ASSIGN_OR_RETURN(TokenizerSource src, detect_tokenizer_source(file));
  const char* name = src.kind == TokenizerSource::Kind::kHfTokenizerJson      ? "tokenizer.json"
                     : src.kind == TokenizerSource::Kind::kSentencePieceModel ? "tokenizer.model"
                                                                              : nullptr;
  if (name == nullptr) return invalid_argument("--tokenizer takes a tokenizer.json or a SentencePiece tokenizer.model");
  NB_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, load_tokenizer(src));
  if (tok->vocab_size() > p.vocab_size) {
    return invalid_argument("the tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but " + p.name +
                            " has a vocabulary of " + std::to_string(p.vocab_size) + "; give a matching tokenizer");
  }
  std::error_code ec;
  fs::copy_file(file, dir / name, fs::copy_options::overwrite_existing, ec);
  const fs::path config = fs::path(file).parent_path() / "tokenizer_config.json";
  if (!ec && src.kind == TokenizerSource::Kind::kHfTokenizerJson && fs::is_regular_file(config, ec)) {
    fs::copy_file(config, dir / "tokenizer_config.json", fs::copy_options::overwrite_existing, ec);
  }
  if (ec) return internal_error("copying the tokenizer into '" + dir.string() + "' failed: " + ec.message());
  std::printf("synth: tokenizer %s copied from %s (%d tokens)\n", name, file.c_str(), tok->vocab_size());
  return Status::Ok();
}

Status make_tokenizer(const SynthPreset& p, const std::string& text_file, const fs::path& dir) {
  std::string text(builtin_training_text());
  if (!text_file.empty()) {
    NB_ASSIGN_OR_RETURN(text, read_file(text_file));
  }
  SynthTokenizerSpec spec{p.vocab_size, p.specials, p.bos, p.eos, p.add_bos, p.max_position_embeddings};
  NB_ASSIGN_OR_RETURN(SynthTokenizerFiles files, make_synth_tokenizer(spec, text));
  NB_RETURN_IF_ERROR(write_text_file(dir / "tokenizer.json", files.tokenizer_json));
  NB_RETURN_IF_ERROR(write_text_file(dir / "tokenizer_config.json", files.tokenizer_config_json));
  std::printf("synth: tokenizer.json: byte-level BPE, %lld tokens = %zu special + 256 bytes + %lld learned (%lld merges) "
              "+ %lld reserved\n",
              static_cast<long long>(p.vocab_size), p.specials.size(), static_cast<long long>(files.num_learned),
              static_cast<long long>(files.num_merges), static_cast<long long>(files.num_reserved));
  return Status::Ok();
}

struct Progress {
  uint64_t total = 0, done = 0;
  Clock::time_point start = Clock::now(), last = Clock::now();
  void tensor_done(uint64_t bytes, const std::string& name, bool force) {
    done += bytes;
    if (!force && seconds_since(last) < 1.0) return;
    last = Clock::now();
    const double s = seconds_since(start);
    std::printf("synth: %8.3f / %.3f GB (%3.0f%%)  %6.0f MB/s  %s\n", done / 1e9, total / 1e9,
                total ? 100.0 * done / total : 100.0, s > 0 ? done / s / 1e6 : 0.0, name.c_str());
    std::fflush(stdout);
  }
};

// One shard: generation of chunk k+1 overlaps the write of chunk k (two buffers).
Status write_shard(const fs::path& path, const std::vector<SynthTensor>& tensors, const std::vector<size_t>& which,
                   const SynthPreset& p, SynthDType dtype, uint64_t seed, bool sync, ThreadPool& pool, Progress& progress) {
  std::vector<SafetensorsTensorSpec> specs;
  for (size_t i : which) specs.push_back({tensors[i].name, synth_dtype_st_name(dtype), tensors[i].shape});
  const fs::path partial = path.string() + ".partial";
  NB_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                      SafetensorsWriter::create(partial.string(), specs, {{"format", "pt"}}));
  const int elem = synth_dtype_bytes(dtype);
  const int64_t chunk_elems = static_cast<int64_t>(kChunkBytes) / elem;
  std::vector<char> buf[2] = {std::vector<char>(kChunkBytes), std::vector<char>(kChunkBytes)};
  int cur = 0;
  std::future<Status> pending;
  auto wait_pending = [&]() -> Status { return pending.valid() ? pending.get() : Status::Ok(); };
  for (size_t i : which) {
    const SynthTensor& t = tensors[i];
    const uint64_t key = synth_tensor_key(seed, t.name);
    const auto stddev = static_cast<float>(p.initializer_range);
    const int64_t numel = t.numel();
    for (int64_t begin = 0; begin < numel; begin += chunk_elems) {
      const int64_t n = std::min(chunk_elems, numel - begin);
      char* out = buf[cur].data();
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        synth_fill(t.init, key, stddev, dtype, begin + b, e - b, out + b * elem);
      }, 4096);
      NB_RETURN_IF_ERROR(wait_pending());  // buf[cur ^ 1] is free again after this
      const uint64_t bytes = static_cast<uint64_t>(n) * elem;
      pending = std::async(std::launch::async, [&w, out, bytes] { return w->write(out, bytes); });
      cur ^= 1;
    }
    progress.tensor_done(static_cast<uint64_t>(numel) * elem, t.name, false);
  }
  NB_RETURN_IF_ERROR(wait_pending());
  NB_RETURN_IF_ERROR(w->finish(sync));
  std::error_code ec;
  fs::rename(partial, path, ec);
  if (ec) return internal_error("cannot rename '" + partial.string() + "': " + ec.message());
  return Status::Ok();
}

int run_synth(int argc, char** argv) {
  CliArgs args("synth", "--config NAME -o DIR [--dtype f16|bf16|f32] [--seed S] [--layers N] [--tokenizer FILE]");
  args.option("--config", "model shape: " + synth_preset_names());
  args.option("-o,--output", "output directory (created if missing)");
  args.option("--dtype", "weight dtype: f16, bf16 or f32 (default: the real checkpoint's)");
  args.option("--seed", "random seed; the same seed gives identical files", "0");
  args.option("--layers", "override the number of layers (quick tests)");
  args.option("--tokenizer", "copy this tokenizer.json or tokenizer.model instead of making a byte-level BPE one");
  args.option("--tokenizer-text", "learn the BPE merges from this text file (default: a built-in text)");
  args.option("--max-shard-bytes", "largest shard in tensor bytes (default 5000000000, as transformers)");
  args.option("-t,--threads", "generator threads; 0 = all cores", "0");
  args.flag("--sync", "fsync every file before reporting the time");
  args.flag("--no-weights", "write config.json and the tokenizer and print the shard plan, but no weights");
  args.flag("--force", "replace model files already in the output directory");
  if (Status s = args.parse(argc, argv); !s.ok()) return fail("synth", s);
  if (args.help_requested()) {
    std::fputs(args.usage().c_str(), stdout);
    return 0;
  }
  if (!args.has("--config") || !args.has("-o")) {
    return fail("synth", invalid_argument("--config NAME and -o DIR are required; see 'nibble synth --help'"));
  }
  Result<SynthPreset> preset = find_synth_preset(args.get("--config"));
  if (!preset.ok()) return fail("synth", preset.status());
  SynthPreset p = *preset;
  SynthDType dtype = p.native_dtype;
  if (args.has("--dtype")) {
    Result<SynthDType> d = parse_synth_dtype(args.get("--dtype"));
    if (!d.ok()) return fail("synth", d.status());
    dtype = *d;
  }
  Result<int64_t> seed = args.get_int("--seed", 0, INT64_MAX);
  if (!seed.ok()) return fail("synth", seed.status());
  if (args.has("--layers")) {
    Result<int64_t> layers = args.get_int("--layers", 1, 4096);
    if (!layers.ok()) return fail("synth", layers.status());
    p.num_layers = *layers;
  }
  uint64_t max_shard = kDefaultMaxShardBytes;
  if (args.has("--max-shard-bytes")) {
    Result<int64_t> m = args.get_int("--max-shard-bytes", 1, INT64_MAX);
    if (!m.ok()) return fail("synth", m.status());
    max_shard = static_cast<uint64_t>(*m);
  }
  Result<int64_t> threads = args.get_int("--threads", 0, 1024);
  if (!threads.ok()) return fail("synth", threads.status());

  const fs::path dir = args.get("-o");
  const auto start = Clock::now();
  if (Status s = prepare_dir(dir, args.has("--force")); !s.ok()) return fail("synth", s);
  const Status tok = args.has("--tokenizer") ? copy_tokenizer(args.get("--tokenizer"), p, dir)
                                             : make_tokenizer(p, args.get("--tokenizer-text"), dir);
  if (!tok.ok()) return fail("synth", tok);

  const std::vector<SynthTensor> tensors = synth_tensors(p);
  const int elem = synth_dtype_bytes(dtype);
  std::vector<uint64_t> sizes;
  Progress progress;
  for (const SynthTensor& t : tensors) {
    sizes.push_back(static_cast<uint64_t>(t.numel()) * elem);
    progress.total += sizes.back();
  }
  const std::vector<std::vector<size_t>> shards = plan_safetensors_shards(sizes, max_shard);
  std::printf("synth: %s (shape of %s), %lld layers, %s, seed %lld: %zu tensors, %.3f GB in %zu file%s -> %s\n",
              p.name.c_str(), p.hf_name.c_str(), static_cast<long long>(p.num_layers), synth_dtype_torch_name(dtype),
              static_cast<long long>(*seed), tensors.size(), progress.total / 1e9, shards.size(),
              shards.size() == 1 ? "" : "s", dir.c_str());
  for (size_t s = 0; s < shards.size(); ++s) {
    uint64_t bytes = 0;
    for (size_t i : shards[s]) bytes += sizes[i];
    std::printf("synth: shard %s: %zu tensors, %llu bytes\n",
                shards.size() == 1 ? "model.safetensors" : safetensors_shard_name(s, shards.size()).c_str(),
                shards[s].size(), static_cast<unsigned long long>(bytes));
  }
  std::fflush(stdout);
  if (args.has("--no-weights")) {
    if (Status st = write_text_file(dir / "config.json", synth_config_json(p, dtype, static_cast<uint64_t>(*seed))); !st.ok()) {
      return fail("synth", st);
    }
    std::printf("synth: --no-weights: wrote config.json and the tokenizer only\n");
    return 0;
  }

  ThreadPool pool(static_cast<int>(*threads));
  progress.start = Clock::now();
  std::map<std::string, std::string> weight_map;
  uint64_t file_bytes = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = shards.size() == 1 ? "model.safetensors" : safetensors_shard_name(s, shards.size());
    const Status st = write_shard(dir / name, tensors, shards[s], p, dtype, static_cast<uint64_t>(*seed),
                                  args.has("--sync"), pool, progress);
    if (!st.ok()) return fail("synth", st);
    for (size_t i : shards[s]) weight_map[tensors[i].name] = name;
    std::error_code ec;
    file_bytes += fs::file_size(dir / name, ec);
    progress.tensor_done(0, "-> " + name, true);
  }
  if (shards.size() > 1) {
    const Status st = write_text_file(dir / "model.safetensors.index.json", safetensors_index_json(progress.total, weight_map));
    if (!st.ok()) return fail("synth", st);
  }
  // config.json last: a directory without it is visibly unfinished and does not load.
  if (Status st = write_text_file(dir / "config.json", synth_config_json(p, dtype, static_cast<uint64_t>(*seed))); !st.ok()) {
    return fail("synth", st);
  }
  const double weights_s = seconds_since(progress.start);
  std::printf("synth: wrote %llu bytes (%llu tensor bytes, %.3f GB) in %zu safetensors file%s in %.2f s (%.0f MB/s%s); "
              "total %.2f s\n",
              static_cast<unsigned long long>(file_bytes), static_cast<unsigned long long>(progress.total),
              file_bytes / 1e9, shards.size(), shards.size() == 1 ? "" : "s", weights_s, file_bytes / weights_s / 1e6,
              args.has("--sync") ? ", fsynced" : ", page cache", seconds_since(start));
  return 0;
}

}  // namespace
NB_REGISTER_COMMAND("synth", run_synth,
                    "--config NAME -o DIR: write a random-weight model of a real model's shape (HF safetensors)");
}  // namespace nb::tools
