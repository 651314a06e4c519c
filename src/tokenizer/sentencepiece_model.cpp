// SentencePiece tokenizer.model: a protobuf ModelProto (sentencepiece_model.proto), read with a
// small protobuf wire-format reader that checks every length against the bytes that are left.
//
// Fields read (the rest are skipped):
//   ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
//   SentencePiece   1: piece (string)   2: score (float)   3: type (enum, default NORMAL)
//   TrainerSpec     3: model_type (1 unigram, 2 bpe; default unigram)   24: treat_whitespace_as_suffix
//                   35: byte_fallback   40/41/42: unk/bos/eos id (defaults 0/1/2)   44: unk_surface
//   NormalizerSpec  1: name   2: precompiled_charsmap   3: add_dummy_prefix (default true)
//                   4: remove_extra_whitespaces (default true)   5: escape_whitespaces (default true)
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "tokenizer/tokenizer_models.h"

namespace nb {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

class ProtoReader {
 public:
  explicit ProtoReader(std::string_view buf) : buf_(buf) {}
  bool done() const { return pos_ >= buf_.size(); }

  Status key(uint32_t* field, uint32_t* wire) {
    uint64_t k = 0;
    NB_RETURN_IF_ERROR(varint(&k));
    *field = static_cast<uint32_t>(k >> 3);
    *wire = static_cast<uint32_t>(k & 7);
    if (*field == 0 || (k >> 3) > 0x1FFFFFFF) return bad("a field number of 0 or above 2^29");
    return Status::Ok();
  }
  Status varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= buf_.size()) return bad("a varint cut off by the end of the data");
      const auto b = static_cast<uint8_t>(buf_[pos_++]);
      if (shift == 63 && b > 1) return bad("a varint longer than 64 bits");
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return Status::Ok();
    }
    return bad("a varint longer than 10 bytes");
  }
  Status bytes(std::string_view* out) {
    uint64_t len = 0;
    NB_RETURN_IF_ERROR(varint(&len));
    if (len > buf_.size() - pos_) {
      return bad("a field of " + std::to_string(len) + " bytes where only " + std::to_string(buf_.size() - pos_) +
                 " are left");
    }
    *out = buf_.substr(pos_, len);
    pos_ += len;
    return Status::Ok();
  }
  Status fixed32(uint32_t* v) {
    if (buf_.size() - pos_ < 4) return bad("a 4-byte field cut off by the end of the data");
    std::memcpy(v, buf_.data() + pos_, 4);  // little-endian on every machine we build for
    pos_ += 4;
    return Status::Ok();
  }
  Status skip(uint32_t wire) {
    switch (wire) {
      case kVarint: {
        uint64_t v = 0;
        return varint(&v);
      }
      case kFixed64:
        if (buf_.size() - pos_ < 8) return bad("an 8-byte field cut off by the end of the data");
        pos_ += 8;
        return Status::Ok();
      case kLengthDelimited: {
        std::string_view s;
        return bytes(&s);
      }
      case kFixed32: {
        uint32_t v = 0;
        return fixed32(&v);
      }
      default:
        return bad("wire type " + std::to_string(wire) + ", which protobuf does not define (or deprecated groups)");
    }
  }
  // Reads a field of the expected wire type, else fails.
  Status expect(uint32_t wire, uint32_t want) {
    if (wire != want) return bad("a field with wire type " + std::to_string(wire) + " where " + std::to_string(want) + " belongs");
    return Status::Ok();
  }

 private:
  static Status bad(const std::string& what) {
    return data_loss("not a valid SentencePiece model (protobuf): found " + what +
                     "; the file is truncated or corrupt — re-download tokenizer.model");
  }
  std::string_view buf_;
  size_t pos_ = 0;
};

struct Piece {
  std::string_view text;
  float score = 0.0f;
  uint64_t type = 1;  // NORMAL
};

Status parse_piece(std::string_view msg, Piece* p) {
  ProtoReader r(msg);
  while (!r.done()) {
    uint32_t field, wire;
    NB_RETURN_IF_ERROR(r.key(&field, &wire));
    if (field == 1) {
      NB_RETURN_IF_ERROR(r.expect(wire, kLengthDelimited));
      NB_RETURN_IF_ERROR(r.bytes(&p->text));
    } else if (field == 2) {
      NB_RETURN_IF_ERROR(r.expect(wire, kFixed32));
      uint32_t bits = 0;
      NB_RETURN_IF_ERROR(r.fixed32(&bits));
      std::memcpy(&p->score, &bits, 4);
    } else if (field == 3) {
      NB_RETURN_IF_ERROR(r.expect(wire, kVarint));
      NB_RETURN_IF_ERROR(r.varint(&p->type));
    } else {
      NB_RETURN_IF_ERROR(r.skip(wire));
    }
  }
  return Status::Ok();
}

struct Trainer {
  uint64_t model_type = 1;  // UNIGRAM
  bool whitespace_as_suffix = false;
  bool byte_fallback = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2;
  std::string_view unk_surface = " \xE2\x81\x87 ";
};

Status parse_trainer(std::string_view msg, Trainer* t) {
  ProtoReader r(msg);
  while (!r.done()) {
    uint32_t field, wire;
    NB_RETURN_IF_ERROR(r.key(&field, &wire));
    uint64_t v = 0;
    switch (field) {
      case 3: case 24: case 35: case 40: case 41: case 42:
        NB_RETURN_IF_ERROR(r.expect(wire, kVarint));
        NB_RETURN_IF_ERROR(r.varint(&v));
        if (field == 3) t->model_type = v;
        if (field == 24) t->whitespace_as_suffix = v != 0;
        if (field == 35) t->byte_fallback = v != 0;
        // int32 fields: negative values are sign-extended to 64 bits on the wire.
        if (field == 40) t->unk_id = static_cast<int32_t>(v);
        if (field == 41) t->bos_id = static_cast<int32_t>(v);
        if (field == 42) t->eos_id = static_cast<int32_t>(v);
        break;
      case 44:
        NB_RETURN_IF_ERROR(r.expect(wire, kLengthDelimited));
        NB_RETURN_IF_ERROR(r.bytes(&t->unk_surface));
        break;
      default:
        NB_RETURN_IF_ERROR(r.skip(wire));
    }
  }
  return Status::Ok();
}

struct Normalizer {
  std::string_view name;
  std::string_view charsmap;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

Status parse_normalizer(std::string_view msg, Normalizer* n) {
  ProtoReader r(msg);
  while (!r.done()) {
    uint32_t field, wire;
    NB_RETURN_IF_ERROR(r.key(&field, &wire));
    uint64_t v = 0;
    if (field == 1 || field == 2) {
      NB_RETURN_IF_ERROR(r.expect(wire, kLengthDelimited));
      NB_RETURN_IF_ERROR(r.bytes(field == 1 ? &n->name : &n->charsmap));
    } else if (field >= 3 && field <= 5) {
      NB_RETURN_IF_ERROR(r.expect(wire, kVarint));
      NB_RETURN_IF_ERROR(r.varint(&v));
      (field == 3 ? n->add_dummy_prefix : field == 4 ? n->remove_extra_whitespaces : n->escape_whitespaces) = v != 0;
    } else {
      NB_RETURN_IF_ERROR(r.skip(wire));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> parse_sentencepiece_model(std::string_view bytes) {
  std::vector<Piece> pieces;
  Trainer trainer;
  Normalizer normalizer;
  ProtoReader r(bytes);
  while (!r.done()) {
    uint32_t field, wire;
    NB_RETURN_IF_ERROR(r.key(&field, &wire));
    if (field >= 1 && field <= 3) {
      NB_RETURN_IF_ERROR(r.expect(wire, kLengthDelimited));
      std::string_view msg;
      NB_RETURN_IF_ERROR(r.bytes(&msg));
      if (field == 1) {
        Piece p;
        NB_RETURN_IF_ERROR(parse_piece(msg, &p));
        pieces.push_back(p);
      } else if (field == 2) {
        NB_RETURN_IF_ERROR(parse_trainer(msg, &trainer));
      } else {
        NB_RETURN_IF_ERROR(parse_normalizer(msg, &normalizer));
      }
    } else {
      NB_RETURN_IF_ERROR(r.skip(wire));
    }
  }

  if (pieces.empty()) return data_loss("the SentencePiece model has no pieces; the file is truncated or not a tokenizer.model");
  if (trainer.model_type != 2) {
    return unimplemented("SentencePiece model type " + std::to_string(trainer.model_type) +
                         " (1 = unigram) is not supported; only BPE models (type 2, as Llama and Mistral use) are");
  }
  if (trainer.whitespace_as_suffix) return unimplemented("SentencePiece models with treat_whitespace_as_suffix are not supported");
  if (!normalizer.charsmap.empty()) {
    return unimplemented("SentencePiece normalizer '" + std::string(normalizer.name) +
                         "' (a precompiled charsmap) is not supported; only the identity normalizer is");
  }

  TokenVocab vocab;
  vocab.texts.reserve(pieces.size());
  vocab.types.reserve(pieces.size());
  vocab.scores.reserve(pieces.size());
  std::unordered_map<std::string_view, size_t> seen;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const Piece& p = pieces[i];
    if (p.text.empty()) return data_loss("SentencePiece piece " + std::to_string(i) + " is empty; the model is corrupt");
    if (p.type < 1 || p.type > 6) {
      return data_loss("SentencePiece piece " + std::to_string(i) + " has type " + std::to_string(p.type) +
                       "; expected 1..6 (normal, unknown, control, user-defined, unused, byte)");
    }
    if (std::isnan(p.score)) return data_loss("SentencePiece piece " + std::to_string(i) + " has a NaN score");
    if (const auto [it, fresh] = seen.emplace(p.text, i); !fresh) {
      return data_loss("SentencePiece piece '" + std::string(p.text) + "' appears twice (ids " +
                       std::to_string(it->second) + " and " + std::to_string(i) + "); the model is corrupt");
    }
    vocab.texts.emplace_back(p.text);
    vocab.scores.push_back(p.score);
    vocab.types.push_back(static_cast<TokenType>(p.type));
  }
  const auto n = static_cast<int64_t>(pieces.size());
  const auto id_or_none = [&](int64_t id) { return id >= 0 && id < n ? static_cast<int32_t>(id) : -1; };
  if (trainer.unk_id < 0 || trainer.unk_id >= n || vocab.types[trainer.unk_id] != TokenType::kUnknown) {
    return data_loss("SentencePiece unk_id " + std::to_string(trainer.unk_id) + " is not an unknown-type piece");
  }
  vocab.unk_id = static_cast<int32_t>(trainer.unk_id);
  vocab.bos_id = id_or_none(trainer.bos_id);
  vocab.eos_id = id_or_none(trainer.eos_id);
  vocab.add_bos = vocab.bos_id >= 0;  // Llama's convention (HF LlamaTokenizer, llama.cpp)

  SpmOptions options;
  options.add_dummy_prefix = normalizer.add_dummy_prefix;
  options.remove_extra_whitespaces = normalizer.remove_extra_whitespaces;
  options.escape_whitespaces = normalizer.escape_whitespaces;
  options.byte_fallback = trainer.byte_fallback;
  options.unk_surface = std::string(trainer.unk_surface);
  return make_spm_tokenizer(std::move(vocab), std::move(options));
}

}  // namespace nb
