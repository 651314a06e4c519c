"""Pre-quantized checkpoints against an independent numpy packer (quant_formats_ref.py):
numpy-packed GPTQ / AutoAWQ / compressed-tensors directories load in nibble and give the logits of
a float64 forward on the numpy-dequantized weights; directories nibble writes unpack (numpy) to
exactly the weights nibble itself loads (nibble convert --dtype f32) and are a faithful quantization
of the source; broken directories give clear errors."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import quant_formats_ref as ref
from conftest import SHARED

IDS = [1, 17, 300, 42, 5, 511, 256, 0, 99, 77, 123, 4]


def nibble_logits(nibble_bin, model, tmp_path, vocab):
    out = tmp_path / "logits.f32"
    r = subprocess.run([nibble_bin, "logits", "-m", str(model), "--ids", ",".join(map(str, IDS)), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.fromfile(out, dtype=np.float32).reshape(len(IDS), vocab)


def quantized_dir(tmp_path, layout, bits, group_size, sym=False, act_order=False, seed=0):
    """Quantizes the tiny model with numpy RTN and packs it; returns (dir, dequantized weights, act_int8)."""
    cfg = ref.tiny_config()
    w = ref.tiny_weights(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    tensors, deq = {}, {}
    for name, val in w.items():
        module = name[: -len(".weight")]
        if not any(module.endswith(l) for l in ref.LINEARS):
            tensors[name] = val.astype(np.float16)
            deq[name] = val.astype(np.float16).astype(np.float64)
            continue
        k = val.shape[1]
        g_idx = rng.permutation(np.arange(k) // group_size) if act_order else None
        codes, scales, zeros = ref.rtn(val.astype(np.float64), bits, group_size, sym, g_idx)
        if layout.startswith("gptq"):
            v2 = layout == "gptq_v2"
            gi = g_idx if g_idx is not None else ref.group_of(k, group_size)
            packed = ref.gptq_pack(codes, scales, zeros, gi, bits, v2)
        elif layout == "awq":
            packed = ref.awq_pack(codes, scales, zeros)
        else:
            packed = ref.ct_pack(codes, scales, None if sym else zeros)
        for suffix, arr in packed.items():
            tensors[module + "." + suffix] = arr
        s16 = scales.astype(np.float16).astype(np.float64) if layout != "ct" else scales.astype(np.float64)
        deq[name] = ref.dequantize(codes, zeros, s16, group_size, g_idx)
    if layout.startswith("gptq"):
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order, "sym": sym,
              "checkpoint_format": layout}
    elif layout == "awq":
        qc = {"quant_method": "awq", "version": "gemm", "w_bit": bits, "q_group_size": group_size, "zero_point": True}
    else:
        qc = {"quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
              "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"],
                                            "weights": {"num_bits": 8, "type": "int", "symmetric": sym,
                                                        "strategy": "channel", "dynamic": False},
                                            "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                                                  "strategy": "token", "dynamic": True}}}}
    d = tmp_path / f"{layout}_{bits}_{group_size}"
    ref.write_dir(d, cfg, tensors, qc)
    return d, cfg, deq, layout == "ct"


@pytest.mark.parametrize("layout,bits,group_size,sym,act_order", [
    ("gptq", 4, 32, False, False),
    ("gptq", 4, 64, True, False),
    ("gptq_v2", 3, 32, False, True),
    ("gptq", 8, -1, True, False),
    ("gptq", 2, 32, False, False),
    ("awq", 4, 64, False, False),
    ("ct", 8, -1, True, False),
    ("ct", 8, -1, False, False),
])
def test_numpy_packed_checkpoint_matches_dequantized_forward(nibble_bin, tmp_path, layout, bits, group_size, sym, act_order):
    d, cfg, deq, act_int8 = quantized_dir(tmp_path, layout, bits, group_size, sym, act_order)
    got = nibble_logits(nibble_bin, d, tmp_path, cfg["vocab_size"])
    want = ref.forward(cfg, deq, IDS, act_int8=act_int8)
    scale = np.abs(want).max()
    # f32 (nibble) vs float64 (numpy) on the same weights: ~1e-6 relative; W8A8 adds rare one-step
    # differences in an activation code where x / d sits within f32 rounding of a .5 tie.
    tol = (2e-3 if act_int8 else 1e-4) * scale
    assert np.abs(got - want).max() <= tol, (np.abs(got - want).max(), scale)
    # The quantization matters at this scale: the unquantized model gives clearly different logits.
    full = ref.forward(cfg, {k: v.astype(np.float64) for k, v in ref.tiny_weights(cfg, 0).items()}, IDS)
    assert np.abs(full - want).max() > 10 * tol


def tiny_model_with_tokenizer(tmp_path):
    cfg = ref.tiny_config(vocab=512)
    d = tmp_path / "tiny_f32"
    ref.write_dir(d, cfg, ref.tiny_weights(cfg, 5))
    shutil.copy(SHARED / "stories260K" / "tok512.model", d / "tokenizer.model")
    return d, cfg


@pytest.mark.parametrize("method,args,layout", [
    ("rtn", ["--wbits", "4", "--group-size", "32"], "gptq"),
    ("rtn", ["--wbits", "3", "--group-size", "64", "--sym"], "gptq"),
    ("gptq", ["--wbits", "4", "--group-size", "64", "--act-order"], "gptq"),
    ("awq", ["--wbits", "4", "--group-size", "64"], "awq"),
    ("rtn", ["--wbits", "8", "--group-size", "-1", "--sym", "--act-int8"], "ct"),
])
def test_nibble_written_checkpoint_unpacks_to_what_nibble_loads(nibble_bin, tmp_path, method, args, layout):
    src, cfg = tiny_model_with_tokenizer(tmp_path)
    q = tmp_path / "q"
    calib = tmp_path / "calib.txt"
    calib.write_text(open(SHARED / "text" / "wikitext-2-raw.valid.txt").read()[:20000])
    r = subprocess.run([nibble_bin, "quantize", "-m", str(src), "-o", str(q), "--method", method, "--calib", str(calib),
                        "--calib-samples", "4", "--calib-seqlen", "64", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    qcfg, qt = ref.read_dir(q)
    qc = qcfg["quantization_config"]
    assert os.path.exists(q / "tokenizer.model")
    # What nibble itself loads from the directory, dequantized: nibble convert --dtype f32.
    f = tmp_path / "f32"
    r = subprocess.run([nibble_bin, "convert", "-m", str(q), "-o", str(f), "--dtype", "f32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _, ft = ref.read_dir(f)
    _, orig = ref.read_dir(src)
    for l in range(cfg["num_hidden_layers"]):
        for lin in ref.LINEARS:
            m = f"model.layers.{l}.{lin}"
            t = {k[len(m) + 1:]: v for k, v in qt.items() if k.startswith(m + ".")}
            if layout == "gptq":
                assert qc["quant_method"] == "gptq"
                bits, gs = qc["bits"], qc["group_size"]
                codes, zeros, scales, g_idx = ref.gptq_unpack(t, bits, qc["checkpoint_format"] == "gptq_v2")
                w = ref.dequantize(codes, zeros, scales.astype(np.float64), gs, g_idx)
            elif layout == "awq":
                assert qc["quant_method"] == "awq" and qc["version"] == "gemm"
                bits, gs = 4, qc["q_group_size"]
                codes, zeros, scales = ref.awq_unpack(t)
                w = ref.dequantize(codes, zeros, scales.astype(np.float64), gs)
            else:
                assert qc["quant_method"] == "compressed-tensors"
                assert qc["config_groups"]["group_0"]["input_activations"]["strategy"] == "token"
                bits, gs = 8, -1
                codes, zeros, scales = ref.ct_unpack(t)
                w = ref.dequantize(codes, zeros, scales.astype(np.float64), gs, bits=8)
            assert codes.min() >= 0 and codes.max() < (1 << bits)
            np.testing.assert_array_equal(w.astype(np.float32), ft[m + ".weight"], err_msg=m)
            # A faithful quantization of the source weight: RTN is within half a step, plus what
            # storing the scale as f16 moves a code's value: |q - zero| < 2^bits steps times the f16
            # relative rounding 2^-11 (GPTQ trades per-weight error for output error: bound loosely).
            step = np.abs(ref.dequantize(np.ones_like(codes), np.zeros_like(zeros) if zeros is not None else None,
                                         scales.astype(np.float64), gs, g_idx if layout == "gptq" else None, bits=bits))
            err = np.abs(w - orig[m + ".weight"].astype(np.float64))
            if method == "rtn":
                assert np.all(err <= step * (0.5 + (1 << bits) * 2.0 ** -11) + 1e-7), (m, (err / step).max())
            elif method == "gptq":
                assert np.mean(err) < np.mean(step), m


def test_broken_checkpoints_give_clear_errors(nibble_bin, tmp_path):
    d, cfg, _, _ = quantized_dir(tmp_path, "gptq", 4, 32)
    # A group size that does not divide in_features.
    c = json.load(open(d / "config.json"))
    c["quantization_config"]["group_size"] = 48
    json.dump(c, open(d / "config.json", "w"))
    r = subprocess.run([nibble_bin, "info", "-m", str(d)], capture_output=True, text=True)
    assert r.returncode != 0 and "does not divide" in r.stderr, r.stderr
    # Shapes that do not match the configuration (bits say 8, the tensors hold 4-bit packing).
    c["quantization_config"]["group_size"] = 32
    c["quantization_config"]["bits"] = 8
    json.dump(c, open(d / "config.json", "w"))
    r = subprocess.run([nibble_bin, "info", "-m", str(d)], capture_output=True, text=True)
    assert r.returncode != 0 and "does not match" in r.stderr, r.stderr
    # NaN scales are reported.
    c["quantization_config"]["bits"] = 4
    json.dump(c, open(d / "config.json", "w"))
    from safetensors.numpy import load_file, save_file
    t = load_file(d / "model.safetensors")
    s = t["model.layers.1.mlp.up_proj.scales"].copy()
    s[0, 3] = np.nan
    t["model.layers.1.mlp.up_proj.scales"] = s
    save_file(t, d / "model.safetensors")
    r = subprocess.run([nibble_bin, "info", "-m", str(d)], capture_output=True, text=True)
    assert r.returncode != 0 and "NaN" in r.stderr and "up_proj" in r.stderr, r.stderr
    # A truncated file.
    data = open(d / "model.safetensors", "rb").read()
    open(d / "model.safetensors", "wb").write(data[: len(data) // 2])
    r = subprocess.run([nibble_bin, "info", "-m", str(d)], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip(), r.stderr
    assert "Traceback" not in r.stderr and "terminate" not in r.stderr
