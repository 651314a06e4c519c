"""An independent numpy implementation of the Llama forward pass, reading the model files with
numpy and the `gguf` package (not with nibble). Float64 throughout, so it is the accurate side of
every comparison."""
import numpy as np


def read_llama2c(path):
    """llama2.c legacy v0 .bin: 7 int32 header, then f32 weights (karpathy/llama2.c run.c order)."""
    raw = np.fromfile(path, dtype=np.uint8)
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = np.frombuffer(raw[:28].tobytes(), dtype=np.int32)
    shared = vocab > 0
    vocab = abs(int(vocab))
    hd = dim // n_heads
    f = np.frombuffer(raw[28:].tobytes(), dtype=np.float32)
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = f[off:off + n].reshape(shape)
        off += n
        return a.astype(np.float64)

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, n_heads * hd, dim)
    wk = take(n_layers, n_kv * hd, dim)
    wv = take(n_layers, n_kv * hd, dim)
    wo = take(n_layers, dim, n_heads * hd)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    off += seq * hd // 2 * 2  # freq_cis_real, freq_cis_imag
    wcls = emb if shared else take(vocab, dim)
    layers = [dict(attn_norm=rms_att[i], wq=wq[i], wk=wk[i], wv=wv[i], wo=wo[i], ffn_norm=rms_ffn[i],
                   gate=w1[i], down=w2[i], up=w3[i]) for i in range(n_layers)]
    cfg = dict(dim=int(dim), n_heads=int(n_heads), n_kv=int(n_kv), head_dim=int(hd), eps=1e-5, theta=10000.0)
    return cfg, dict(emb=emb, layers=layers, final_norm=rms_final, output=wcls)


def read_gguf_llama(path):
    import gguf
    r = gguf.GGUFReader(path)

    def field(key):
        fl = r.fields[key]
        v = fl.parts[fl.data[0]]
        return v.tolist()[0] if hasattr(v, "tolist") else v

    t = {}
    for ten in r.tensors:
        shape = [int(x) for x in reversed(ten.shape.tolist())]  # outermost first
        data = gguf.quants.dequantize(ten.data, ten.tensor_type)
        t[ten.name] = np.asarray(data, dtype=np.float64).reshape(shape)
    dim = int(field("llama.embedding_length"))
    n_heads = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv"))
    n_layers = int(field("llama.block_count"))
    cfg = dict(dim=dim, n_heads=n_heads, n_kv=n_kv, head_dim=dim // n_heads,
               eps=float(field("llama.attention.layer_norm_rms_epsilon")),
               theta=float(field("llama.rope.freq_base")) if "llama.rope.freq_base" in r.fields else 10000.0)
    layers = []
    for i in range(n_layers):
        p = f"blk.{i}."
        layers.append(dict(attn_norm=t[p + "attn_norm.weight"], wq=t[p + "attn_q.weight"], wk=t[p + "attn_k.weight"],
                           wv=t[p + "attn_v.weight"], wo=t[p + "attn_output.weight"],
                           ffn_norm=t[p + "ffn_norm.weight"], gate=t[p + "ffn_gate.weight"],
                           up=t[p + "ffn_up.weight"], down=t[p + "ffn_down.weight"]))
    out = t.get("output.weight", t["token_embd.weight"])
    return cfg, dict(emb=t["token_embd.weight"], layers=layers, final_norm=t["output_norm.weight"], output=out)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_interleaved(x, pos, theta):
    """x: [T, H, D]; rotates pairs (2i, 2i+1) by pos * theta^(-2i/D)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * inv[None, :]  # [T, D/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def forward(cfg, w, ids):
    """Logits [T, vocab] for token ids at positions 0..T-1 (causal)."""
    T = len(ids)
    H, KV, D = cfg["n_heads"], cfg["n_kv"], cfg["head_dim"]
    pos = np.arange(T, dtype=np.float64)
    x = w["emb"][np.asarray(ids)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for L in w["layers"]:
        h = rms_norm(x, L["attn_norm"], cfg["eps"])
        q = (h @ L["wq"].T).reshape(T, H, D)
        k = (h @ L["wk"].T).reshape(T, KV, D)
        v = (h @ L["wv"].T).reshape(T, KV, D)
        q, k = rope_interleaved(q, pos, cfg["theta"]), rope_interleaved(k, pos, cfg["theta"])
        rep = H // KV
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
        x = x + o @ L["wo"].T
        h = rms_norm(x, L["ffn_norm"], cfg["eps"])
        g, u = h @ L["gate"].T, h @ L["up"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ L["down"].T
    x = rms_norm(x, w["final_norm"], cfg["eps"])
    return x @ w["output"].T
