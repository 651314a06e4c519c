"""SmolLM2's byte-level BPE tokenizer: nibble vs HF `tokenizers`.

The reference is built in Python from the GGUF's own vocabulary and merges (read with the `gguf`
package) using tokenizers' BPE model with SmolLM2's pre-tokenizer and decoder:
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)] and a
ByteLevel decoder, the 17 control tokens added as special tokens. It shares the data with nibble,
not the code.

Invalid UTF-8: Python strings cannot hold it, so nibble gets the raw bytes and HF gets the same
bytes decoded with one U+FFFD per invalid byte — the replacement nibble's encode documents.
"""
import json
import random
import subprocess

import pytest

from conftest import SMOLLM2
from test_tokenizer_helpers import (ADVERSARIAL, INVALID_UTF8, decode_with_nibble, per_byte_replace,
                                    random_multilingual, run_nibble, wikitext_lines)

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 GGUF missing: run scripts/setup.sh")


def _strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def _ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


@pytest.fixture(scope="module")
def gguf_vocab():
    r = gguf.GGUFReader(str(SMOLLM2))
    tokens = _strings(r, "tokenizer.ggml.tokens")
    types = _ints(r, "tokenizer.ggml.token_type")
    merges = _strings(r, "tokenizer.ggml.merges")
    meta = {k: _ints(r, k)[0] for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    assert _strings(r, "tokenizer.ggml.pre") == ["smollm"]
    return tokens, types, merges, meta


@pytest.fixture(scope="module")
def hf(gguf_vocab):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    tokens, types, merges, _ = gguf_vocab
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    assert tok.get_vocab_size() == len(tokens)
    return tok


def hf_encode(hf, texts, parse_special=True):
    hf.encode_special_tokens = not parse_special
    try:
        return [hf.encode(t, add_special_tokens=False).ids for t in texts]
    finally:
        hf.encode_special_tokens = False


def assert_same_ids(ours, ref, texts):
    assert len(ours) == len(ref) == len(texts)
    bad = [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]
    assert not bad, f"{len(bad)} of {len(texts)} differ; first: {bad[0]!r}"


INPUTS = wikitext_lines() + ADVERSARIAL + random_multilingual(300, seed=7)


@pytest.mark.parametrize("parse_special", [True, False])
def test_gguf_ids_match_hf(nibble_bin, hf, tmp_path, parse_special):
    args = ["-m", str(SMOLLM2)] + ([] if parse_special else ["--no-special"])
    ours = run_nibble(nibble_bin, args, INPUTS, tmp_path)
    assert_same_ids(ours, hf_encode(hf, INPUTS, parse_special), INPUTS)


def test_special_tokens_parsed_only_when_asked(nibble_bin, tmp_path):
    text = "<|im_start|>user\nHi<|im_end|>"
    on, = run_nibble(nibble_bin, ["-m", str(SMOLLM2)], [text], tmp_path)
    off, = run_nibble(nibble_bin, ["-m", str(SMOLLM2), "--no-special"], [text], tmp_path)
    assert on[0] == 1 and on[-1] == 2 and 1 not in off and 2 not in off


def test_invalid_utf8_matches_hf_on_per_byte_replacement(nibble_bin, hf, tmp_path):
    ours = run_nibble(nibble_bin, ["-m", str(SMOLLM2)], raw_lines=INVALID_UTF8, tmp_path=tmp_path)
    texts = [per_byte_replace(b) for b in INVALID_UTF8]
    assert_same_ids(ours, hf_encode(hf, texts), texts)
    assert all(o for o in ours)


def test_decode_matches_hf_and_round_trips(nibble_bin, hf, tmp_path):
    ids = hf_encode(hf, INPUTS)
    for skip in (False, True):
        ours = decode_with_nibble(nibble_bin, SMOLLM2, ids, tmp_path, skip_special=skip)
        ref = [hf.decode(x, skip_special_tokens=skip) for x in ids]
        assert ours == ref
    # Byte-level BPE loses nothing: valid UTF-8 comes back exactly (special-token text too), except
    # the few control bytes SmolLM2's vocabulary has no token for (encode drops them, as HF does).
    missing_bytes = {b for b, c in enumerate(_byte_chars_by_byte()) if hf.token_to_id(c) is None}
    # (Besides C0, C1, F5..FF, which UTF-8 never uses, and F1, F2, which only lead unassigned planes.)
    rare = {0xC0, 0xC1, 0xF1, 0xF2} | set(range(0xF5, 0x100))
    assert missing_bytes and all(b < 0x20 or b in rare for b in missing_bytes)
    ours = decode_with_nibble(nibble_bin, SMOLLM2, ids, tmp_path)
    expected = ["".join(ch for ch in t if not missing_bytes & set(ch.encode())) for t in INPUTS]
    assert ours == expected
    assert sum(e == t for e, t in zip(expected, INPUTS)) >= len(INPUTS) - 2


def test_decode_random_ids_matches_hf_lossy_utf8(nibble_bin, hf, tmp_path):
    """Random id sequences break UTF-8 all over the place (tokens holding partial characters);
    nibble must replace exactly as HF's decoder (String::from_utf8_lossy) does."""
    rng = random.Random(11)
    n = hf.get_vocab_size()
    # Bias towards the single-byte tokens (ids of the 256 byte characters) to make broken sequences.
    byte_ids = [i for i in (hf.token_to_id(c) for c in _byte_chars()) if i is not None]
    seqs = [[rng.choice(byte_ids) if rng.random() < 0.6 else rng.randrange(n) for _ in range(rng.randint(0, 30))]
            for _ in range(400)]
    ours = decode_with_nibble(nibble_bin, SMOLLM2, seqs, tmp_path)
    ref = [hf.decode(s, skip_special_tokens=False) for s in seqs]
    assert ours == ref
    assert any("\ufffd" in r for r in ref)  # the test does exercise replacement


def test_stream_chunks_concatenate_to_decode(nibble_bin, hf, tmp_path):
    rng = random.Random(5)
    byte_ids = [i for i in (hf.token_to_id(c) for c in _byte_chars()) if i is not None]
    seqs = hf_encode(hf, INPUTS[:300] + ADVERSARIAL) + [
        [rng.choice(byte_ids) for _ in range(rng.randint(1, 20))] for _ in range(200)]
    chunks = decode_with_nibble(nibble_bin, SMOLLM2, seqs, tmp_path, stream=True)
    ref = [hf.decode(s, skip_special_tokens=False) for s in seqs]
    # Each chunk arrived as a JSON string, so each is valid UTF-8 on its own; nibble also checks.
    assert ["".join(c) for c in chunks] == ref
    assert all(len(c) == len(s) + 1 for c, s in zip(chunks, seqs))  # one chunk per push + flush


def test_tokenizer_json_path_matches_hf(nibble_bin, hf, gguf_vocab, tmp_path):
    tokens, _, _, meta = gguf_vocab
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
        "eos_token": {"content": tokens[meta["tokenizer.ggml.eos_token_id"]]},
        "add_bos_token": False}))
    for parse_special in (True, False):
        args = ["-m", str(path)] + ([] if parse_special else ["--no-special"])
        ours = run_nibble(nibble_bin, args, INPUTS, tmp_path)
        assert_same_ids(ours, hf_encode(hf, INPUTS, parse_special), INPUTS)
    info = json.loads(subprocess.run([nibble_bin, "tokenize", "-m", str(path), "--info"], capture_output=True,
                                     check=True).stdout)
    assert info["bos_id"] == meta["tokenizer.ggml.bos_token_id"]
    assert info["eos_id"] == meta["tokenizer.ggml.eos_token_id"]
    assert info["vocab_size"] == len(tokens)


def test_gguf_special_ids(nibble_bin, gguf_vocab):
    tokens, _, _, meta = gguf_vocab
    info = json.loads(subprocess.run([nibble_bin, "tokenize", "-m", str(SMOLLM2), "--info"], capture_output=True,
                                     check=True).stdout)
    assert info["bos_id"] == meta["tokenizer.ggml.bos_token_id"] == tokens.index("<|im_start|>")
    assert info["eos_id"] == meta["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")
    assert sorted(info["eot_ids"]) == sorted({tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")})
    assert info["add_bos"] is False


def _byte_chars_by_byte():
    """_byte_chars() indexed by byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in bs]
    table = {b: chr(b) for b in bs}
    table.update({b: chr(256 + n) for n, b in enumerate(rest)})
    return [table[b] for b in range(256)]


def _byte_chars():
    """GPT-2's byte->unicode alphabet, written out independently of nibble's table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]
