"""An independent numpy packer/unpacker for the pre-quantized checkpoint layouts, written from the
formats' documentation and reference implementations (not from nibble's C++):

GPTQ (AutoGPTQ `QuantLinear.pack`, GPTQModel): qweight int32 [in*bits/32, out] holds the codes of
each output column as an LSB-first bit stream along the input dim (for 3 bits, values straddle
words); qzeros int32 [groups, out*bits/32] the zero points, packed the same way along the output
dim; checkpoint_format "gptq" (v1) stores zero-1, "gptq_v2" the zero itself; scales f16
[groups, out]; g_idx int32 [in] the group of every input channel. w = (q - zero) * scale.

AutoAWQ GEMM (`WQLinear_GEMM.from_linear`): qweight int32 [in, out/8]; nibble i (bits 4i..4i+3) of
word c holds output column 8c + order[i], order = [0, 2, 4, 6, 1, 3, 5, 7]; qzeros [groups, out/8]
packed the same way (no offset); scales f16 [groups, out].

compressed-tensors "int-quantized" (llm-compressor): weight int8 [out, in]; weight_scale [out, 1]
(strategy channel) or [out, groups]; weight_zero_point int8 when asymmetric; w = (weight - zp) * s.
W8A8 input_activations: dynamic, per token, symmetric: x_q = round(x / (absmax / 127)).
"""
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


# ---- bit streams ----

def pack_stream(vals, bits):
    """vals: [..., n] small non-negative ints, n*bits % 32 == 0 -> uint32 [..., n*bits/32], LSB first."""
    vals = np.asarray(vals, dtype=np.uint64)
    n = vals.shape[-1]
    assert n * bits % 32 == 0
    out = np.zeros(vals.shape[:-1] + (n * bits // 32,), dtype=np.uint64)
    for i in range(n):
        pos = i * bits
        w, off = pos // 32, pos % 32
        v = vals[..., i] << np.uint64(off)
        out[..., w] |= v & np.uint64(0xFFFFFFFF)
        if off + bits > 32:
            out[..., w + 1] |= v >> np.uint64(32)
    return out.astype(np.uint32)


def unpack_stream(words, n, bits):
    words = np.asarray(words).astype(np.uint32).astype(np.uint64)
    out = np.zeros(words.shape[:-1] + (n,), dtype=np.int64)
    mask = (1 << bits) - 1
    for i in range(n):
        pos = i * bits
        w, off = pos // 32, pos % 32
        v = words[..., w] >> np.uint64(off)
        if off + bits > 32:
            v |= words[..., w + 1] << np.uint64(32 - off)
        out[..., i] = (v & np.uint64(mask)).astype(np.int64)
    return out


# ---- GPTQ ----

def gptq_pack(codes, scales, zeros, g_idx, bits, v2):
    """codes [out, in], scales/zeros [out, groups] -> the four GPTQ tensors."""
    qweight = pack_stream(codes, bits).T.copy()  # each output row's stream along in, then [in*bits/32, out]
    z = zeros.T.astype(np.int64) - (0 if v2 else 1)  # [groups, out]
    qzeros = pack_stream(z & ((1 << bits) - 1), bits)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32),
            "scales": scales.T.astype(np.float16), "g_idx": np.asarray(g_idx, dtype=np.int32)}


def gptq_unpack(t, bits, v2):
    qweight, qzeros = t["qweight"].view(np.uint32), t["qzeros"].view(np.uint32)
    k = qweight.shape[0] * 32 // bits
    n = qweight.shape[1]
    codes = unpack_stream(qweight.T, k, bits)  # [out, in]
    zeros = unpack_stream(qzeros, n, bits).T + (0 if v2 else 1)  # [out, groups]
    scales = t["scales"].astype(np.float32).T
    return codes, zeros, scales, t["g_idx"].astype(np.int64)


# ---- AutoAWQ GEMM ----

def awq_pack(codes, scales, zeros):
    out, k = codes.shape
    qweight = np.zeros((k, out // 8), dtype=np.uint32)
    qzeros = np.zeros((zeros.shape[1], out // 8), dtype=np.uint32)
    for i, col in enumerate(AWQ_ORDER):
        qweight |= codes[col::8, :].T.astype(np.uint32) << np.uint32(4 * i)
        qzeros |= zeros[col::8, :].T.astype(np.uint32) << np.uint32(4 * i)
    return {"qweight": qweight.view(np.int32), "qzeros": qzeros.view(np.int32), "scales": scales.T.astype(np.float16)}


def awq_unpack(t):
    qweight, qzeros = t["qweight"].view(np.uint32), t["qzeros"].view(np.uint32)
    k, n8 = qweight.shape
    codes = np.zeros((n8 * 8, k), dtype=np.int64)
    zeros = np.zeros((n8 * 8, qzeros.shape[0]), dtype=np.int64)
    for i, col in enumerate(AWQ_ORDER):
        codes[col::8, :] = ((qweight >> np.uint32(4 * i)) & 0xF).T
        zeros[col::8, :] = ((qzeros >> np.uint32(4 * i)) & 0xF).T
    return codes, zeros, t["scales"].astype(np.float32).T


# ---- compressed-tensors ----

def ct_pack(codes, scales, zeros=None):
    t = {"weight": (codes.astype(np.int64) - 128).astype(np.int8), "weight_scale": scales.astype(np.float32)}
    if zeros is not None:
        t["weight_zero_point"] = (zeros.astype(np.int64) - 128).astype(np.int8)
    return t


def ct_unpack(t):
    codes = t["weight"].astype(np.int64) + 128
    zeros = t["weight_zero_point"].astype(np.int64) + 128 if "weight_zero_point" in t else None
    return codes, zeros, t["weight_scale"].astype(np.float32)


# ---- quantization and dequantization ----

def group_of(k, group_size, g_idx=None):
    if g_idx is not None:
        return np.asarray(g_idx, dtype=np.int64)
    return np.zeros(k, dtype=np.int64) if group_size < 0 else np.arange(k) // group_size


def dequantize(codes, zeros, scales, group_size, g_idx=None, bits=None):
    k = codes.shape[1]
    g = group_of(k, group_size, g_idx)
    if zeros is None:
        zeros = np.full(scales.shape, 1 << (bits - 1))
    return (codes - zeros[:, g]) * scales[:, g].astype(np.float64)


def rtn(w, bits, group_size, sym, g_idx=None):
    """Min-max round to nearest; scales rounded to f16 (what the formats store)."""
    out, k = w.shape
    g = group_of(k, group_size, g_idx)
    ng = g.max() + 1
    qmax = (1 << bits) - 1
    scales = np.zeros((out, ng)); zeros = np.zeros((out, ng), dtype=np.int64)
    for gi in range(ng):
        cols = w[:, g == gi]
        lo, hi = np.minimum(cols.min(1), 0), np.maximum(cols.max(1), 0)
        if sym:
            s = np.maximum(np.abs(lo), hi) / (1 << (bits - 1)); z = np.full(out, 1 << (bits - 1))
        else:
            s = (hi - lo) / qmax; z = np.round(-lo / s)
        scales[:, gi] = np.float16(s).astype(np.float64)
        zeros[:, gi] = z
    codes = np.clip(np.round(w / scales[:, g]) + zeros[:, g], 0, qmax).astype(np.int64)
    return codes, scales.astype(np.float32), zeros


# ---- a tiny HF Llama and its numpy forward (rotate_half RoPE, as transformers) ----

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def tiny_config(vocab=512):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "vocab_size": vocab, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": False}


def tiny_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    d, h, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv, v = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["vocab_size"]
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (v, d)), "model.norm.weight": 1 + rng.normal(0, 0.1, d),
         "lm_head.weight": rng.normal(0, 0.1, (v, d))}
    shapes = {"self_attn.q_proj": (nq, d), "self_attn.k_proj": (nkv, d), "self_attn.v_proj": (nkv, d),
              "self_attn.o_proj": (d, nq), "mlp.gate_proj": (h, d), "mlp.up_proj": (h, d), "mlp.down_proj": (d, h)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, d)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, d)
        for name, shape in shapes.items():
            t[p + name + ".weight"] = rng.normal(0, 0.12, shape)
    return {k: val.astype(np.float32) for k, val in t.items()}


def write_dir(path, cfg, tensors, quant_config=None):
    os.makedirs(path, exist_ok=True)
    c = dict(cfg)
    if quant_config is not None:
        c["quantization_config"] = quant_config
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(path, "model.safetensors"))


def read_dir(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return cfg, load_file(os.path.join(path, "model.safetensors"))


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def _rope_half(x, pos, theta):
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)


def _act_int8(x):
    """Dynamic per-token symmetric int8 (absmax / 127, round half to even), back to float."""
    d = np.abs(x).max(-1, keepdims=True) / 127.0
    q = np.clip(np.round(x / np.where(d == 0, 1, d)), -127, 127)
    return q * d


def forward(cfg, w, ids, act_int8=False):
    """w: name -> float64 weight (linears dequantized). Logits [T, vocab]."""
    T = len(ids)
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = np.arange(T, dtype=np.float64)
    lin = (lambda x, W: _act_int8(x) @ W.T) if act_int8 else (lambda x, W: x @ W.T)
    x = w["model.embed_tokens.weight"][np.asarray(ids)].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, w[p + "self_attn.q_proj.weight"]).reshape(T, H, D)
        k = lin(h, w[p + "self_attn.k_proj.weight"]).reshape(T, KV, D)
        v = lin(h, w[p + "self_attn.v_proj.weight"]).reshape(T, KV, D)
        q, k = _rope_half(q, pos, theta), _rope_half(k, pos, theta)
        k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + lin(np.einsum("hts,shd->thd", att, v).reshape(T, H * D), w[p + "self_attn.o_proj.weight"])
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g, u = lin(h, w[p + "mlp.gate_proj.weight"]), lin(h, w[p + "mlp.up_proj.weight"])
        x = x + lin(g / (1 + np.exp(-g)) * u, w[p + "mlp.down_proj.weight"])
    x = _rms(x, w["model.norm.weight"], eps)
    return x @ w["lm_head.weight"].T.astype(np.float64)
