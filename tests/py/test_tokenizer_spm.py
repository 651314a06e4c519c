"""SentencePiece BPE tokenizers: nibble vs the `sentencepiece` package.

Models: the Llama-2 tokenizer.model (32,000 pieces, byte fallback, identity normalizer, no
remove_extra_whitespaces) and stories260K's tok512.model (512 pieces, byte fallback,
remove_extra_whitespaces). Also tok512.bin (llama2.c's export of the same vocabulary) and GGUF
files written here with the `gguf` package from sentencepiece's own view of each vocabulary.

Control-token text is plain text to sentencepiece, so encodes compare with --no-special.
Invalid UTF-8 goes to both as raw bytes (sentencepiece accepts bytes).

Round trip (what "must" hold): for valid UTF-8 x without U+2581 (which SentencePiece reads as its
own space marker and gives back as ' '), decode(encode(x)) == x exactly for Llama-2 (the
dummy-prefix space that encode adds, decode removes). For tok512 (remove_extra_whitespaces),
decode(encode(x)) == x with leading/trailing ' ' removed and runs of ' ' squeezed to one — only
U+0020; tabs and newlines are kept.

tok512.model's unk_surface is the literal text " \\342\\201\\207 " (escaped octal, as written by its
trainer); tok512.bin and GGUF files do not carry unk_surface, so there nibble prints sentencepiece's
default " \u2047 ", and the comparisons swap one for the other.
"""
import json
import random
import re
import subprocess

import pytest

from conftest import SHARED
from test_tokenizer_helpers import (ADVERSARIAL, INVALID_UTF8, decode_with_nibble, random_multilingual, run_nibble,
                                    wikitext_lines)

spm = pytest.importorskip("sentencepiece")
gguf = pytest.importorskip("gguf")

LLAMA2 = SHARED / "llama2-tokenizer.model"
TOK512 = SHARED / "stories260K" / "tok512.model"
TOK512_BIN = SHARED / "stories260K" / "tok512.bin"
MODELS = {"llama2": LLAMA2, "tok512": TOK512}

INPUTS = wikitext_lines() + ADVERSARIAL + random_multilingual(300, seed=3)


def squeeze_spaces(s):
    return re.sub(" +", " ", s).strip(" ")


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    path = MODELS[request.param]
    if not path.exists():
        pytest.skip(f"{path} missing")
    return request.param, path, spm.SentencePieceProcessor(model_file=str(path))


def assert_same(ours, ref, inputs):
    assert len(ours) == len(ref) == len(inputs)
    bad = [(i, o, r) for i, o, r in zip(inputs, ours, ref) if o != r]
    assert not bad, f"{len(bad)} of {len(inputs)} differ; first: {bad[0]!r}"


@pytest.mark.parametrize("add_bos", [False, True])
def test_ids_match_sentencepiece(nibble_bin, model, tmp_path, add_bos):
    _, path, sp = model
    args = ["-m", str(path), "--no-special"] + ([] if add_bos else ["--no-bos"])
    ours = run_nibble(nibble_bin, args, INPUTS, tmp_path)
    assert_same(ours, [sp.encode(s, add_bos=add_bos) for s in INPUTS], INPUTS)


def test_invalid_utf8_matches_sentencepiece(nibble_bin, model, tmp_path):
    _, path, sp = model
    ours = run_nibble(nibble_bin, ["-m", str(path), "--no-bos"], raw_lines=INVALID_UTF8, tmp_path=tmp_path)
    assert_same(ours, [sp.encode(b) for b in INVALID_UTF8], INVALID_UTF8)


def test_control_text_parsed_only_with_special(nibble_bin, model, tmp_path):
    _, path, sp = model
    on, off = (run_nibble(nibble_bin, ["-m", str(path), "--no-bos"] + extra, ["<s>hi</s>"], tmp_path)[0]
               for extra in ([], ["--no-special"]))
    assert on[0] == sp.bos_id() and on[-1] == sp.eos_id()
    assert off == sp.encode("<s>hi</s>")


def _random_ids(sp, rng, n):
    """Id sequences biased to byte tokens, unk and control ids: broken UTF-8 and odd spacing."""
    special = [sp.unk_id(), sp.bos_id(), sp.eos_id()]
    byte_ids = [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]
    seqs = []
    for _ in range(n):
        seq = []
        for _ in range(rng.randint(0, 25)):
            r = rng.random()
            seq.append(rng.choice(byte_ids) if r < 0.5 else rng.choice(special) if r < 0.6
                       else rng.randrange(sp.get_piece_size()))
        seqs.append(seq)
    return seqs


def test_decode_matches_sentencepiece(nibble_bin, model, tmp_path):
    _, path, sp = model
    seqs = [sp.encode(s) for s in INPUTS] + _random_ids(sp, random.Random(1), 400)
    ours = decode_with_nibble(nibble_bin, path, seqs, tmp_path, skip_special=True)
    ref = [sp.decode(s) for s in seqs]
    assert_same(ours, ref, seqs)
    assert any("\ufffd" in r for r in ref)


def test_round_trip(nibble_bin, model, tmp_path):
    name, path, _ = model
    ids = run_nibble(nibble_bin, ["-m", str(path), "--no-special"], INPUTS, tmp_path)
    ours = decode_with_nibble(nibble_bin, path, ids, tmp_path, skip_special=True)
    expected = INPUTS if name == "llama2" else [squeeze_spaces(s) for s in INPUTS]
    kept = [i for i, s in enumerate(INPUTS) if "\u2581" not in s]
    assert len(kept) >= len(INPUTS) - 2
    assert_same([ours[i] for i in kept], [expected[i] for i in kept], [INPUTS[i] for i in kept])


def test_stream_chunks_concatenate_to_decode(nibble_bin, model, tmp_path):
    _, path, sp = model
    seqs = [sp.encode(s) for s in INPUTS[:300] + ADVERSARIAL] + _random_ids(sp, random.Random(2), 300)
    chunks = decode_with_nibble(nibble_bin, path, seqs, tmp_path, skip_special=True, stream=True)
    assert_same(["".join(c) for c in chunks], [sp.decode(s) for s in seqs], seqs)


def test_tok512_bin_matches_tok512_model(nibble_bin, tmp_path):
    """llama2.c's tok512.bin holds the same vocabulary but not the normalizer flags; nibble reads it
    as llama2.c's run.c does (no remove_extra_whitespaces), so compare on text where that flag is
    a no-op."""
    sp = spm.SentencePieceProcessor(model_file=str(TOK512))
    inputs = [squeeze_spaces(s) for s in INPUTS]
    ours = run_nibble(nibble_bin, ["-m", str(TOK512_BIN), "--no-special", "--no-bos"], inputs, tmp_path)
    assert_same(ours, [sp.encode(s) for s in inputs], inputs)
    seqs = _random_ids(sp, random.Random(4), 200)
    ours = decode_with_nibble(nibble_bin, TOK512_BIN, seqs, tmp_path, skip_special=True)
    assert ours == [sp_decode_default_unk(sp, s) for s in seqs]


def sp_decode_default_unk(sp, ids):
    """sp.decode, with the model's unk_surface replaced by sentencepiece's default one."""
    return sp.decode(ids).replace(" \\342\\201\\207 ", " \u2047 ")


def _sp_type(sp, i):
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_unused(i):
        return 5
    if sp.is_byte(i):
        return 6
    return 1


def write_llama_gguf(sp, path, remove_extra_whitespaces):
    w = gguf.GGUFWriter(str(path), "llama")
    n = sp.get_piece_size()
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([_sp_type(sp, i) for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.add_remove_extra_whitespaces(remove_extra_whitespaces)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_llama_vocab_matches_sentencepiece(nibble_bin, model, tmp_path):
    name, _, sp = model
    path = tmp_path / f"{name}.gguf"
    write_llama_gguf(sp, path, remove_extra_whitespaces=name == "tok512")
    ours = run_nibble(nibble_bin, ["-m", str(path), "--no-special"], INPUTS, tmp_path)
    assert_same(ours, [sp.encode(s, add_bos=True) for s in INPUTS], INPUTS)
    seqs = _random_ids(sp, random.Random(6), 200)
    ours = decode_with_nibble(nibble_bin, path, seqs, tmp_path, skip_special=True)
    assert ours == [sp_decode_default_unk(sp, s) for s in seqs]
    info = json.loads(subprocess.run([nibble_bin, "tokenize", "-m", str(path), "--info"], capture_output=True,
                                     check=True).stdout)
    assert (info["bos_id"], info["eos_id"], info["unk_id"]) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert info["eot_ids"] == [sp.eos_id()] and info["vocab_size"] == sp.get_piece_size()
