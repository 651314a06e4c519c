// load_tokenizer: dispatch on the source kind; detect_tokenizer_source: work the kind out from a path.
#include <cstdio>
#include <filesystem>

#include "core/mmap_file.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

namespace fs = std::filesystem;

Result<std::unique_ptr<Tokenizer>> with_path(Result<std::unique_ptr<Tokenizer>> r, const std::string& path) {
  if (!r.ok()) return r.status().with_context(path);
  return r;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> load_tokenizer(const TokenizerSource& source) {
  switch (source.kind) {
    case TokenizerSource::Kind::kGguf: {
      NB_ASSIGN_OR_RETURN(const std::shared_ptr<GgufFile> gguf, GgufFile::open(source.path));
      return tokenizer_from_gguf(*gguf);
    }
    case TokenizerSource::Kind::kSentencePieceModel: {
      NB_ASSIGN_OR_RETURN(const std::string bytes, read_file(source.path));
      return with_path(parse_sentencepiece_model(bytes), source.path);
    }
    case TokenizerSource::Kind::kLlama2cBin: {
      NB_ASSIGN_OR_RETURN(const std::string bytes, read_file(source.path));
      return with_path(parse_llama2c_tokenizer(bytes), source.path);
    }
    case TokenizerSource::Kind::kHfTokenizerJson: {
      NB_ASSIGN_OR_RETURN(const std::string text, read_file(source.path));
      std::string config;
      const fs::path config_path = fs::path(source.path).parent_path() / "tokenizer_config.json";
      std::error_code ec;
      if (fs::is_regular_file(config_path, ec)) {
        NB_ASSIGN_OR_RETURN(config, read_file(config_path.string()));
      }
      return with_path(parse_hf_tokenizer_json(text, config), source.path);
    }
    case TokenizerSource::Kind::kNone:
      break;
  }
  return not_found("no tokenizer was found for this model; give a tokenizer file (.gguf, tokenizer.model, "
                   "tok*.bin or tokenizer.json)");
}

Result<TokenizerSource> detect_tokenizer_source(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      if (fs::is_regular_file(p / name, ec)) return detect_tokenizer_source((p / name).string());
    }
    return not_found("directory " + path + " holds neither tokenizer.json nor tokenizer.model");
  }
  if (!fs::is_regular_file(p, ec)) return not_found(path + ": no such file");
  const std::string name = p.filename().string();
  const std::string ext = p.extension().string();

  std::string head(4, '\0');
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    head.resize(std::fread(head.data(), 1, 4, f));
    std::fclose(f);
  }
  if (head == "GGUF" || ext == ".gguf") return TokenizerSource{TokenizerSource::Kind::kGguf, path};
  if (ext == ".json") return TokenizerSource{TokenizerSource::Kind::kHfTokenizerJson, path};
  if (ext == ".model") return TokenizerSource{TokenizerSource::Kind::kSentencePieceModel, path};
  if (ext == ".bin") return TokenizerSource{TokenizerSource::Kind::kLlama2cBin, path};
  return invalid_argument("cannot tell what kind of tokenizer " + path +
                          " is; expected a .gguf file, a SentencePiece .model, a llama2.c tok*.bin, a tokenizer.json "
                          "or a directory holding one");
}

}  // namespace nb
