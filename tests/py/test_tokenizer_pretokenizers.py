"""Pre-tokenizer families other than SmolLM2's, on SmolLM2's vocabulary and merges.

For each tokenizer.ggml.pre name nibble maps to a regex (gpt2, llama3, qwen2), a GGUF file with
that name is written with the `gguf` package, and HF tokenizers is given the pre-tokenizer that
family's tokenizer.json has (the regexes below are copied from the Llama-3 / Qwen2 tokenizer.json
files; HF runs them with Oniguruma, nibble with PCRE2). The same HF tokenizer saved as
tokenizer.json also goes through nibble's JSON path (Split + ByteLevel(use_regex=false)).
Qwen2's real tokenizer.json also has an NFC normalizer, which nibble does not implement; the
comparison here is of the split regex alone.
"""
import pytest

from conftest import SMOLLM2
from test_tokenizer_helpers import ADVERSARIAL, random_multilingual, run_nibble, wikitext_lines

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.skipif(not SMOLLM2.exists(), reason="SmolLM2 GGUF missing: run scripts/setup.sh")

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")

INPUTS = wikitext_lines(600) + ADVERSARIAL + random_multilingual(300, seed=17) + [
    "I'M HE'S THEY'LL We'Re", "x\r\n\r\ny", "  \n  z", "abc123456789def", "!!!\n\n", "a \n\n b"]


def _strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


@pytest.fixture(scope="module")
def vocab():
    r = gguf.GGUFReader(str(SMOLLM2))
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    return _strings(r, "tokenizer.ggml.tokens"), types, _strings(r, "tokenizer.ggml.merges")


def hf_tokenizer(vocab, family):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    tokens, types, merges = vocab
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ", 1)) for m in merges]))
    if family == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3 if family == "llama3" else QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def write_gguf(path, vocab, pre):
    tokens, types, merges = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family", ["gpt2", "llama3", "qwen2"])
def test_pre_tokenizer_family_matches_hf(nibble_bin, vocab, tmp_path, family):
    hf = hf_tokenizer(vocab, family)
    ref = [hf.encode(s, add_special_tokens=False).ids for s in INPUTS]
    gguf_path = tmp_path / f"{family}.gguf"
    write_gguf(gguf_path, vocab, family)
    json_path = tmp_path / "tokenizer.json"
    hf.save(str(json_path))
    for path in (gguf_path, json_path):
        ours = run_nibble(nibble_bin, ["-m", str(path)], INPUTS, tmp_path)
        bad = [(s, o, r) for s, o, r in zip(INPUTS, ours, ref) if o != r]
        assert not bad, f"{path.name}: {len(bad)} of {len(INPUTS)} differ; first: {bad[0]!r}"
