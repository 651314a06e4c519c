"""nibble quantize end to end on stories260K (a real llama2.c model, dim 64, hidden 172):
- RTN's written codes/scales/zeros equal a numpy RTN written here from the min-max definition,
  read back with a GPTQ unpacker written here from the format's description (qweight packed along
  the input dim, LSB first; qzeros along the output dim; checkpoint_format "gptq" stores zero - 1);
- a GPTQ-quantized model written out computes, when nibble loads it back, the same logits as the
  numpy reference forward (llama_ref.py) on the dequantized weights;
- bad group sizes and missing / short calibration text give clear errors."""
import json
import subprocess

import numpy as np
import pytest

import llama_ref
from conftest import SHARED

STORIES = SHARED / "stories260K" / "stories260K.bin"
CALIB = SHARED / "text" / "wikitext-2-raw.valid.txt"


def quantize(nibble_bin, out, *args, check=True):
    return subprocess.run([nibble_bin, "quantize", "-m", str(STORIES), "-o", str(out), *args], capture_output=True,
                          text=True, check=check)


def unpack_stream(words, bits, count):
    """LSB-first bit stream of `count` values of `bits` bits from int32 words (1-D)."""
    b = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
    return (b[:count * bits].reshape(count, bits) * (1 << np.arange(bits))).sum(1)


def read_gptq(path):
    """{module: dequantized weight [n, k] (float64)} and the quantization config."""
    from safetensors.numpy import load_file
    cfg = json.loads((path / "config.json").read_text())["quantization_config"]
    t = load_file(str(path / "model.safetensors"))
    bits, v1 = cfg["bits"], cfg.get("checkpoint_format", "gptq") == "gptq"
    out = {}
    for name in [k[:-len(".qweight")] for k in t if k.endswith(".qweight")]:
        qw, qz, sc = t[name + ".qweight"], t[name + ".qzeros"], t[name + ".scales"].astype(np.float64)
        k, n, groups = qw.shape[0] * 32 // bits, qw.shape[1], sc.shape[0]
        codes = np.stack([unpack_stream(qw[:, c], bits, k) for c in range(n)], axis=0)  # [n, k]
        zeros = np.stack([unpack_stream(qz[g], bits, n) for g in range(groups)], axis=0) + (1 if v1 else 0)  # [G, n]
        gidx = t[name + ".g_idx"] if name + ".g_idx" in t else np.arange(k) // (k // groups)
        out[name] = (codes - zeros[gidx].T) * sc[gidx].T
    return out, cfg, t


def numpy_rtn(w, bits, group, sym):
    """Min-max RTN of [n, k] float32 weights; scales rounded to fp16 (as written)."""
    n, k = w.shape
    g = k if group < 0 else group
    wg = w.reshape(n, k // g, g)
    lo, hi = np.minimum(wg.min(-1), 0), np.maximum(wg.max(-1), 0)
    if sym:
        scale = (np.maximum(-lo, hi) / (2 ** (bits - 1) - 1)).astype(np.float16).astype(np.float32)
        zero = np.full_like(scale, 2 ** (bits - 1))
    else:
        scale = ((hi - lo) / (2 ** bits - 1)).astype(np.float16).astype(np.float32)
        zero = np.clip(np.round(-lo / scale), 0, 2 ** bits - 1)
    q = np.clip(np.round(wg / scale[..., None]) + zero[..., None], 0, 2 ** bits - 1)
    return ((q - zero[..., None]) * scale[..., None]).reshape(n, k)


def to_rotate_half(w, heads):
    """Rows of an interleaved-RoPE q/k weight in HF's rotate_half order."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def stories_linears():
    cfg, w = llama_ref.read_llama2c(STORIES)
    names = dict(wq="self_attn.q_proj", wk="self_attn.k_proj", wv="self_attn.v_proj", wo="self_attn.o_proj",
                 gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj")
    out = {}
    for i, layer in enumerate(w["layers"]):
        for key, hf in names.items():
            m = layer[key].astype(np.float32)
            if key in ("wq", "wk"):
                m = to_rotate_half(m, cfg["n_heads"] if key == "wq" else cfg["n_kv"])
            out[f"model.layers.{i}.{hf}"] = m
    return cfg, w, out


@pytest.mark.parametrize("group,sym", [(4, False), (-1, True), (-1, False)])
def test_rtn_matches_numpy(nibble_bin, tmp_path, group, sym):
    args = ["--method", "rtn", "--wbits", "8", "--group-size", str(group)] + (["--sym"] if sym else [])
    quantize(nibble_bin, tmp_path / "q", *args)
    got, cfg, _ = read_gptq(tmp_path / "q")
    assert cfg["bits"] == 8 and cfg["group_size"] == group and cfg["sym"] == sym
    _, _, ref = stories_linears()
    assert sorted(got) == sorted(ref)
    for name, w in ref.items():
        expect = numpy_rtn(w, 8, group, sym)
        step = np.abs(w).max() / 100
        mism = np.abs(got[name] - expect) > 1e-6 * step
        # float32 division may round a tie the other way on the odd weight; nothing else may differ
        assert mism.mean() < 1e-3, f"{name}: {mism.sum()} of {mism.size} weights differ"
        assert np.abs(got[name] - w).max() <= np.abs(w).max() / 127 * 1.01


def test_gptq_model_loads_back_and_matches_numpy_forward(nibble_bin, tmp_path):
    q = tmp_path / "gptq"
    res = quantize(nibble_bin, q, "--method", "gptq", "--wbits", "8", "--group-size", "4", "--act-order",
                   "--calib", str(CALIB), "--calib-samples", "8", "--calib-seqlen", "128")
    assert "layer 5/5" in res.stderr and "ETA" in res.stderr
    got, cfg, t = read_gptq(q)
    assert cfg["desc_act"] is True and "model.layers.0.self_attn.q_proj.g_idx" in t
    mcfg, w, ref = stories_linears()
    # GPTQ moves weights off their RTN values but stays within a few grid steps of the float weight.
    for name, wf in ref.items():
        assert np.abs(got[name] - wf).max() < 0.05 * np.abs(wf).max() + 1e-3, name
    # The numpy forward on the dequantized weights (q/k rows back to interleaved order).
    names = dict(wq="self_attn.q_proj", wk="self_attn.k_proj", wv="self_attn.v_proj", wo="self_attn.o_proj",
                 gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj")
    for i, layer in enumerate(w["layers"]):
        for key, hf in names.items():
            m = got[f"model.layers.{i}.{hf}"]
            if key in ("wq", "wk"):
                heads = mcfg["n_heads"] if key == "wq" else mcfg["n_kv"]
                rows, cols = m.shape
                m = m.reshape(heads, 2, rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
            layer[key] = m
    ids = list(range(1, 49))
    out = tmp_path / "logits.f32"
    subprocess.run([nibble_bin, "logits", "-m", str(q), "--ids", ",".join(map(str, ids)), "-o", str(out), "--exact"], check=True)
    ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)
    expect = llama_ref.forward(mcfg, w, ids)
    rel = np.abs(ours - expect).max(axis=1) / np.abs(expect).max(axis=1)
    assert rel.max() <= 1e-3, rel.max()


def test_awq_vo_scaling_follows_autoawq_rule(nibble_bin, tmp_path):
    """AutoAWQ scales v_proj -> o_proj only when the two have the same shape (no GQA); stories260K has 8 query
    and 4 key/value heads, so the default (--awq-vo auto) must equal 'off' tensor for tensor and differ from 'on'."""
    from safetensors.numpy import load_file
    common = ("--method", "awq", "--wbits", "8", "--group-size", "-1", "--calib", str(CALIB), "--calib-samples", "4",
              "--calib-seqlen", "64")
    models = {}
    for vo in ("auto", "off", "on"):
        quantize(nibble_bin, tmp_path / vo, *common, *(() if vo == "auto" else ("--awq-vo", vo)))
        models[vo] = load_file(str(tmp_path / vo / "model.safetensors"))
    assert models["auto"].keys() == models["off"].keys() == models["on"].keys()
    assert all(np.array_equal(models["auto"][k], models["off"][k]) for k in models["auto"])
    # 'on' rescales o_proj's input columns (and v_proj's rows): those tensors must change.
    changed = [k for k in models["auto"] if not np.array_equal(models["auto"][k], models["on"][k])]
    assert any("o_proj" in k for k in changed) and any("v_proj" in k for k in changed), changed


def test_awq_two_sided_clip_reaches_the_search(nibble_bin, tmp_path):
    """--awq-clip two-sided shrinks an asymmetric group's two ends apart: some clipped weights, hence some packed
    tensors, must differ from the default symmetric clamp; with --sym the two searches are the same. (8 bits:
    stories260K's 172-wide layers cannot be packed at 4.)"""
    from safetensors.numpy import load_file
    common = ("--method", "awq", "--wbits", "8", "--group-size", "-1", "--calib", str(CALIB), "--calib-samples", "4",
              "--calib-seqlen", "64")
    for sym in (False, True):
        models = {}
        for clip in ("sym", "two-sided"):
            d = tmp_path / f"{clip}_{sym}"
            quantize(nibble_bin, d, *common, "--awq-clip", clip, *(("--sym",) if sym else ()))
            models[clip] = load_file(str(d / "model.safetensors"))
        same = all(np.array_equal(models["sym"][k], models["two-sided"][k]) for k in models["sym"])
        assert same == sym, sym


def test_errors(nibble_bin, tmp_path):
    r = quantize(nibble_bin, tmp_path / "a", "--method", "rtn", "--wbits", "4", "--group-size", "32", check=False)
    assert r.returncode != 0 and "does not divide the 172 input features" in r.stderr
    r = quantize(nibble_bin, tmp_path / "b", "--method", "gptq", "--wbits", "8", "--group-size", "-1",
                 "--calib", str(tmp_path / "missing.txt"), check=False)
    assert r.returncode != 0 and "cannot read the calibration text" in r.stderr
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.\n")
    r = quantize(nibble_bin, tmp_path / "c", "--method", "awq", "--wbits", "8", "--group-size", "-1",
                 "--calib", str(short), check=False)
    assert r.returncode != 0 and "tokens but 32 samples" in r.stderr
    r = quantize(nibble_bin, tmp_path / "d", "--method", "awq", "--awq-loss", "blok", check=False)
    assert r.returncode != 0 and "unknown AWQ loss 'blok'; expected one of: linear, block" in r.stderr
    r = quantize(nibble_bin, tmp_path / "e", "--method", "gptq", "--awq-loss", "block", check=False)
    assert r.returncode != 0 and "are AWQ options" in r.stderr
    r = quantize(nibble_bin, tmp_path / "e2", "--method", "gptq", "--awq-vo", "off", check=False)
    assert r.returncode != 0 and "are AWQ options" in r.stderr
    r = quantize(nibble_bin, tmp_path / "e3", "--method", "awq", "--awq-vo", "sometimes", check=False)
    assert r.returncode != 0 and "--awq-vo must be auto, on or off; got 'sometimes'" in r.stderr
    r = quantize(nibble_bin, tmp_path / "f", "--method", "awq", "--wbits", "8", "--group-size", "-1", "--awq-loss", "block",
                 "--calib-samples", "4", "--awq-block-samples", "5", check=False)
    assert r.returncode != 0 and "give between 1 and --calib-samples (4)" in r.stderr
    r = quantize(nibble_bin, tmp_path / "g", "--method", "awq", "--gptq-mse", check=False)
    assert r.returncode != 0 and "--gptq-mse is a GPTQ option" in r.stderr
    r = quantize(nibble_bin, tmp_path / "h", "--method", "awq", "--awq-clip", "both", check=False)
    assert r.returncode != 0 and "--awq-clip must be sym or two-sided; got 'both'" in r.stderr
    r = quantize(nibble_bin, tmp_path / "i", "--method", "gptq", "--awq-clip", "two-sided", check=False)
    assert r.returncode != 0 and "--awq-clip is an AWQ option" in r.stderr

