"""`nibble synth` against independent references: the shapes in the models' published config.json
files (numbers typed in from the Hugging Face hub pages), the `safetensors` package reading the
files, huggingface_hub's own shard splitter, the `tokenizers` package loading tokenizer.json, and the
statistics the weights must have (std = initializer_range, Irwin-Hall(4) kurtosis and bound, norms 1).
Models are small (SmolLM2-135M shape cut to 2 layers); full-size presets are checked with
--no-weights (config, tokenizer and the printed shard plan)."""
import hashlib
import json
import re
import subprocess

import numpy as np
import pytest
from huggingface_hub.serialization import split_state_dict_into_shards_factory
from safetensors import deserialize, safe_open
from tokenizers import Tokenizer

from conftest import SHARED
from test_tokenizer_helpers import ADVERSARIAL, run_nibble, wikitext_lines

# From each model's config.json on the Hugging Face hub, and the parameter counts of the real models.
PUBLISHED = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="float16", bos_token_id=1,
                       eos_token_id=2, rope_scaling=None, params=6_738_415_616),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                        rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="float16", bos_token_id=1,
                        eos_token_id=2, rope_scaling=None, params=13_015_864_320),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=128000,
                       eos_token_id=128001, rope_scaling=None, params=8_030_261_248),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16",
                         bos_token_id=128000, eos_token_id=128001, params=8_030_261_248,
                         rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, torch_dtype="bfloat16", bos_token_id=0,
                         eos_token_id=0, rope_scaling=None, params=134_515_008),
}
SMOL_STD = 0.041666666666666664  # SmolLM2's initializer_range
IRWIN_HALL_BOUND = 2 * np.sqrt(3)  # |sum of 4 uniforms - mean| / std <= 2 sqrt(3)


def synth(nibble_bin, out, *args, check=True):
    proc = subprocess.run([nibble_bin, "synth", "-o", str(out), *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def hf_tensors(cfg):
    """(name, shape) of LlamaForCausalLM's state dict, in its order, from a config dict."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (q, d)), (p + "self_attn.k_proj.weight", (kv, d)),
                (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, q)),
                (p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
                (p + "mlp.down_proj.weight", (d, f)), (p + "input_layernorm.weight", (d,)),
                (p + "post_attention_layernorm.weight", (d,))]
    out.append(("model.norm.weight", (d,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, d)))
    return out


def hub_split(cfg, elem_bytes, max_shard):
    sizes = {n: int(np.prod(s)) * elem_bytes for n, s in hf_tensors(cfg)}
    split = split_state_dict_into_shards_factory(sizes, get_storage_size=lambda x: x,
                                                 filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard)
    return split.filename_to_tensors, sizes


def printed_plan(stdout):
    return {m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"shard (\S+): (\d+) tensors, (\d+) bytes", stdout)}


def sha256s(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def dump(nibble_bin, model, name, tmp_path):
    out = tmp_path / "dump.f32"
    subprocess.run([nibble_bin, "tensors", "-m", str(model), "--dump", name, "-o", str(out)], check=True)
    return np.fromfile(out, dtype="<f4")


def bf16_to_f32(raw):
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


@pytest.fixture(scope="module")
def small(nibble_bin, tmp_path_factory):
    """SmolLM2-135M shape, 2 layers, f16, seed 1."""
    d = tmp_path_factory.mktemp("synth") / "small"
    synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "2", "--dtype", "f16", "--seed", "1")
    return d


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_config_and_shard_plan_match_published(nibble_bin, tmp_path, preset):
    want = PUBLISHED[preset]
    out = synth(nibble_bin, tmp_path / "m", "--config", preset, "--no-weights").stdout
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    for key, value in want.items():
        if key != "params":
            assert cfg[key] == value, key
    assert cfg["head_dim"] == cfg["hidden_size"] // cfg["num_attention_heads"]
    assert cfg["hidden_act"] == "silu" and cfg["attention_bias"] is False and cfg["mlp_bias"] is False
    assert not list((tmp_path / "m").glob("*.safetensors"))
    # The shard plan: the real parameter count at 2 bytes each, split as huggingface_hub splits it.
    files, sizes = hub_split(cfg, 2, 5_000_000_000)
    assert sum(sizes.values()) == 2 * want["params"]
    expect = {f: (len(ts), sum(sizes[t] for t in ts)) for f, ts in files.items()}
    assert printed_plan(out) == expect


def test_loads_with_the_right_config(nibble_bin, small):
    info = subprocess.run([nibble_bin, "info", "-m", str(small)], check=True, capture_output=True, text=True).stdout
    for line in ["layers         2", "dim            576  (ffn 1536)", "9 query, 3 key/value (head dim 64)",
                 "vocab          49152", "context        8192", "theta 100000", "tied (output = token embeddings)",
                 "format         safetensors", f"tokenizer      tokenizer.json {small}/tokenizer.json"]:
        assert line in info, line
    cfg = dict(PUBLISHED["smollm2-135m"], num_hidden_layers=2)
    n = sum(int(np.prod(s)) for _, s in hf_tensors(cfg))
    assert f"parameters     {n} " in info


def test_files_read_back_with_safetensors_package(nibble_bin, small, tmp_path):
    cfg = dict(PUBLISHED["smollm2-135m"], num_hidden_layers=2)
    expected = hf_tensors(cfg)
    raw = (small / "model.safetensors").read_bytes()
    parsed = deserialize(raw)  # the reference parser validates header, offsets and packing
    assert sorted((n, tuple(t["shape"]), t["dtype"]) for n, t in parsed) == sorted((n, s, "F16") for n, s in expected)
    listing = json.loads(subprocess.run([nibble_bin, "tensors", "-m", str(small), "--json"], check=True,
                                        capture_output=True).stdout)
    assert {(t["name"], tuple(t["shape"]), t["dtype"]) for t in listing["tensors"]} == {(n, s, "F16") for n, s in expected}
    with safe_open(str(small / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses files without it
        for name, shape in expected:
            a = f.get_tensor(name)
            assert a.dtype == np.float16 and a.shape == shape
            np.testing.assert_array_equal(a.astype(np.float32).reshape(-1), dump(nibble_bin, small, name, tmp_path),
                                          err_msg=name)


def test_bf16_and_f32_values_agree_with_the_reader(nibble_bin, small, tmp_path):
    """bf16 (numpy has no bf16: bytes from safetensors.deserialize, widened by hand) and f32 hold the
    same random numbers as f16, each rounded once from the same f32 value."""
    names = ["model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
    f16 = {}
    with safe_open(str(small / "model.safetensors"), framework="np") as f:
        for n in names:
            f16[n] = f.get_tensor(n).astype(np.float32).reshape(-1)
    for dtype, tol in [("bf16", 2.0**-8), ("f32", 2.0**-11)]:
        d = tmp_path / dtype
        synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "2", "--dtype", dtype, "--seed", "1")
        parsed = dict(deserialize((d / "model.safetensors").read_bytes()))
        for n in names:
            t = parsed[n]
            vals = bf16_to_f32(t["data"]) if dtype == "bf16" else np.frombuffer(t["data"], dtype="<f4")
            assert t["dtype"] == {"bf16": "BF16", "f32": "F32"}[dtype]
            np.testing.assert_array_equal(vals, dump(nibble_bin, d, n, tmp_path), err_msg=n)
            np.testing.assert_allclose(vals, f16[n], rtol=tol, atol=1e-7, err_msg=n)


def mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def documented_weights(seed, name, n, std):
    """The generator as synth_model.h documents it, written out in numpy."""
    gamma = np.uint64(0x9E3779B97F4A7C15)
    h = 0xCBF29CE484222325
    for c in name.encode():
        h = ((h ^ c) * 0x100000001B3) % 2**64
    with np.errstate(over="ignore"):
        key = mix64(mix64(np.array([seed], np.uint64) + gamma) ^ np.uint64(h))
        r = mix64(key + np.arange(1, n + 1, dtype=np.uint64) * gamma)
    lanes = sum(((r >> np.uint64(s)) & np.uint64(0xFFFF)).astype(np.int64) for s in (0, 16, 32, 48))
    scale = np.float32(std / np.sqrt((65536.0**2 - 1) / 3))
    return (lanes - 131070).astype(np.float32) * scale


def test_values_follow_the_documented_generator(small):
    with safe_open(str(small / "model.safetensors"), framework="np") as f:
        for name in ["model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"]:
            a = f.get_tensor(name).reshape(-1)
            np.testing.assert_array_equal(a, documented_weights(1, name, a.size, SMOL_STD).astype(np.float16),
                                          err_msg=name)


def test_weight_statistics(small):
    with safe_open(str(small / "model.safetensors"), framework="np") as f:
        tensors = {n: f.get_tensor(n).astype(np.float64).reshape(-1) for n in f.keys()}
    normal = {n: a for n, a in tensors.items() if not n.endswith("norm.weight")}
    for n, a in tensors.items():
        if n.endswith("norm.weight"):
            assert np.all(a == 1.0), n
    for n, a in normal.items():
        assert abs(a.mean()) < 5 * SMOL_STD / np.sqrt(a.size), n
        assert abs(a.std() / SMOL_STD - 1) < 0.02, (n, a.std())
        assert np.abs(a).max() <= IRWIN_HALL_BOUND * SMOL_STD * (1 + 2**-10), n
        z = a / a.std()
        assert abs((z**4).mean() - 3 - (-0.3)) < 0.05, n  # Irwin-Hall(4): excess kurtosis -6/(5*4)
    # Tensors are independent streams: no two share values, and they are uncorrelated.
    q0, k1 = normal["model.layers.0.self_attn.q_proj.weight"], normal["model.layers.1.self_attn.q_proj.weight"]
    assert abs(np.corrcoef(q0, k1)[0, 1]) < 5 / np.sqrt(q0.size)
    firsts = {tuple(a[:8]) for a in normal.values()}
    assert len(firsts) == len(normal)


def test_sharding_and_index(nibble_bin, small, tmp_path):
    d = tmp_path / "sharded"
    max_shard = 3_000_000
    synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "2", "--dtype", "f16", "--seed", "1",
          "--max-shard-bytes", str(max_shard))
    cfg = dict(PUBLISHED["smollm2-135m"], num_hidden_layers=2)
    files, sizes = hub_split(cfg, 2, max_shard)
    assert len(files) > 3
    assert not (d / "model.safetensors").exists()
    assert sorted(p.name for p in d.glob("*.safetensors")) == sorted(files)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert index["weight_map"] == {t: f for f, ts in files.items() for t in ts}
    with safe_open(str(small / "model.safetensors"), framework="np") as whole:
        for fname, names in files.items():
            deserialize((d / fname).read_bytes())  # each shard is a valid file on its own
            with safe_open(str(d / fname), framework="np") as f:
                assert sorted(f.keys()) == sorted(names)
                for n in names:  # values do not depend on how the model is cut into files
                    np.testing.assert_array_equal(f.get_tensor(n), whole.get_tensor(n), err_msg=n)
    info = subprocess.run([nibble_bin, "info", "-m", str(d)], check=True, capture_output=True, text=True).stdout
    assert "layers         2" in info


def test_same_seed_same_bytes_other_seed_other_weights(nibble_bin, small, tmp_path):
    args = ["--config", "smollm2-135m", "--layers", "2", "--dtype", "f16"]
    synth(nibble_bin, tmp_path / "again", *args, "--seed", "1", "--threads", "1")
    assert sha256s(tmp_path / "again") == sha256s(small)
    synth(nibble_bin, tmp_path / "other", *args, "--seed", "2")
    a, b = sha256s(small), sha256s(tmp_path / "other")
    assert a["model.safetensors"] != b["model.safetensors"]
    assert a["tokenizer.json"] == b["tokenizer.json"]
    with safe_open(str(small / "model.safetensors"), framework="np") as f, \
            safe_open(str(tmp_path / "other" / "model.safetensors"), framework="np") as g:
        for n in f.keys():
            same = np.array_equal(f.get_tensor(n), g.get_tensor(n))
            assert same == n.endswith("norm.weight"), n


def test_generate_runs(nibble_bin, tmp_path):
    d = tmp_path / "bf16"
    synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "2")  # the real dtype: bf16
    proc = subprocess.run([nibble_bin, "generate", "-m", str(d), "-p", "hi", "-n", "4"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generated 4 tokens" in proc.stdout + proc.stderr


TEXTS = [line for line in wikitext_lines(200)] + ADVERSARIAL + ["<|endoftext|> <|im_start|>x<|im_end|>", ""]


@pytest.mark.parametrize("preset,first", [("smollm2-135m", None), ("llama-2-7b", 1), ("llama-3-8b", 128000)])
def test_tokenizer_loads_in_hf_tokenizers_and_agrees_with_nibble(nibble_bin, tmp_path, preset, first):
    d = tmp_path / "m"
    out = synth(nibble_bin, d, "--config", preset, "--no-weights").stdout
    assert re.search(r"learned \(\d+ merges\)", out)
    vocab = PUBLISHED[preset]["vocab_size"]
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert hf.get_vocab_size(with_added_tokens=True) == vocab
    assert sorted(hf.get_vocab(with_added_tokens=True).values()) == list(range(vocab))
    ref = [hf.encode(t).ids for t in TEXTS]
    assert run_nibble(nibble_bin, ["-m", str(d)], TEXTS, tmp_path) == ref
    for t, ids in zip(TEXTS, ref):
        assert (ids[:1] == [first]) if first is not None and t else True
        assert hf.decode(ids, skip_special_tokens=False).removeprefix(hf.id_to_token(first) if first is not None
                                                                      else "") == t
    tc = json.loads((d / "tokenizer_config.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    assert hf.token_to_id(tc["bos_token"]) == cfg["bos_token_id"]
    assert hf.token_to_id(tc["eos_token"]) == cfg["eos_token_id"]
    # merges learned from the built-in text do their job: plain English takes fewer tokens than bytes
    english = "The people on the platform watched the train."
    assert len(hf.encode(english, add_special_tokens=False).ids) < len(english) / 2


def test_tokenizer_copy(nibble_bin, tmp_path):
    spm = SHARED / "llama2-tokenizer.model"
    d = tmp_path / "l2"
    synth(nibble_bin, d, "--config", "llama-2-7b", "--no-weights", "--tokenizer", str(spm))
    assert (d / "tokenizer.model").read_bytes() == spm.read_bytes()
    assert not (d / "tokenizer.json").exists()
    # A tokenizer with more ids than the model's vocabulary is refused.
    synth(nibble_bin, tmp_path / "s", "--config", "smollm2-135m", "--no-weights")
    proc = synth(nibble_bin, tmp_path / "bad", "--config", "llama-2-7b", "--no-weights", "--tokenizer",
                 str(tmp_path / "s" / "tokenizer.json"), check=False)
    assert proc.returncode != 0 and "49152 tokens" in proc.stderr


def test_refuses_to_mix_with_an_existing_model(nibble_bin, small, tmp_path):
    d = tmp_path / "m"
    synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "1", "--max-shard-bytes", "1000000")
    proc = synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "1", check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr
    synth(nibble_bin, d, "--config", "smollm2-135m", "--layers", "1", "--force")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json"]
    for bad in (["--config", "llama-9"], ["--config", "smollm2-135m", "--dtype", "q4"], ["--config", "smollm2-135m",
                                                                                         "--layers", "0"]):
        proc = synth(nibble_bin, tmp_path / "x", *bad, check=False)
        assert proc.returncode != 0 and proc.stderr.strip(), bad
