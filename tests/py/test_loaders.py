"""The file-format layer against independent references: GGUF files written by the `gguf` package
(GGUFWriter, gguf.quants) and safetensors files written by `safetensors.numpy`, read back through
`nibble tensors` (listing, metadata as JSON, --dump to raw f32). Float dtypes must round-trip bit
exactly; quantized dtypes must equal gguf.quants.dequantize exactly."""
import json
import struct
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

from conftest import SHARED, SMOLLM2

STORIES = SHARED / "stories260K" / "stories260K.bin"
SHAPES = [(3, 64), (2, 5, 32), (64,), (2, 1, 3, 32)]
QTYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]


def listing(nibble_bin, path):
    out = subprocess.run([nibble_bin, "tensors", "-m", str(path), "--json"], check=True, capture_output=True)
    return json.loads(out.stdout)


def dump(nibble_bin, path, name, tmp_path):
    out = tmp_path / "dump.f32"
    subprocess.run([nibble_bin, "tensors", "-m", str(path), "--dump", name, "-o", str(out)], check=True)
    return np.fromfile(out, dtype="<f4")


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def bf16_bytes_to_f32(raw):
    """Independent bf16 widening: the 16 bits become the top half of an f32."""
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def expected_f32(qtype, stored):
    """What --dump must produce for data as gguf stores it."""
    if qtype == Q.F32:
        return stored.reshape(-1)
    if qtype == Q.F16:
        return stored.astype(np.float32).reshape(-1)
    if qtype == Q.BF16:
        return bf16_bytes_to_f32(stored.tobytes())
    return dequantize(stored, qtype).reshape(-1)


METADATA = [
    # key, value, gguf value type
    ("t.u8", 250, gguf.GGUFValueType.UINT8),
    ("t.i8", -120, gguf.GGUFValueType.INT8),
    ("t.u16", 65000, gguf.GGUFValueType.UINT16),
    ("t.i16", -32000, gguf.GGUFValueType.INT16),
    ("t.u32", 4000000000, gguf.GGUFValueType.UINT32),
    ("t.i32", -2000000000, gguf.GGUFValueType.INT32),
    ("t.f32", 0.1, gguf.GGUFValueType.FLOAT32),
    ("t.bool", True, gguf.GGUFValueType.BOOL),
    ("t.str", "héllo ✓", gguf.GGUFValueType.STRING),
    ("t.u64", 2**64 - 5, gguf.GGUFValueType.UINT64),
    ("t.i64", -(2**62), gguf.GGUFValueType.INT64),
    ("t.f64", 1e300, gguf.GGUFValueType.FLOAT64),
]
ARRAYS = [
    ("a.i32", [1, -2, 3], gguf.GGUFValueType.INT32),
    ("a.u8", [0, 255], gguf.GGUFValueType.UINT8),
    ("a.f32", [0.5, -1.25, 3.0e-8], gguf.GGUFValueType.FLOAT32),
    ("a.str", ["a", "", "ünï"], gguf.GGUFValueType.STRING),
    ("a.bool", [True, False, True], gguf.GGUFValueType.BOOL),
    ("a.u64", [1, 2**63 - 1], gguf.GGUFValueType.UINT64),
    ("a.f64", [1.5, -2.5], gguf.GGUFValueType.FLOAT64),
]


def write_gguf(path, rng, alignment=None, extra_tensors=()):
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype in METADATA:
        w.add_key_value(key, value, vtype)
    for key, value, vtype in ARRAYS:
        w.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=vtype)
    w.add_array("a.nested", [[1, 2], [3]])
    w.add_array("a.after_nested", ["still", "parsed"])
    expected = {}
    for qtype in QTYPES:
        for shape in SHAPES:
            name = f"{qtype.name}.{'x'.join(map(str, shape))}"
            data = rng.standard_normal(shape).astype(np.float32) * 3
            if qtype == Q.F32:
                stored = data
                w.add_tensor(name, stored)
            elif qtype == Q.F16:
                stored = data.astype(np.float16)
                w.add_tensor(name, stored)
            else:
                stored = quantize(data, qtype)
                w.add_tensor(name, stored, raw_dtype=qtype)
            expected[name] = (qtype, shape, stored)
    for name, qtype, shape, raw in extra_tensors:
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = (qtype, shape, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.mark.parametrize("alignment", [None, 64])
def test_gguf_every_dtype_lists_and_dumps_exactly(nibble_bin, tmp_path, alignment):
    rng = np.random.default_rng(1 if alignment is None else 2)
    path = tmp_path / "all.gguf"
    # A K-quant tensor (random bytes): listed with its shape and size, but not dumpable.
    q4k = rng.integers(0, 256, size=(2, 144), dtype=np.uint8)
    expected = write_gguf(path, rng, alignment, [("k.q4_k", Q.Q4_K, (2, 256), q4k)])
    info = listing(nibble_bin, path)
    assert info["format"] == "gguf" and info["version"] == 3
    assert info["alignment"] == (alignment or 32)
    tensors = {t["name"]: t for t in info["tensors"]}
    assert list(tensors) == list(expected)  # file order
    reader = gguf.GGUFReader(str(path))
    for rt in reader.tensors:
        t = tensors[rt.name]
        qtype, shape, stored = expected[rt.name]
        assert tuple(t["shape"]) == shape, rt.name
        assert t["dtype"] == qtype.name
        assert t["bytes"] == stored.nbytes == rt.n_bytes
        assert t["offset"] == rt.data_offset
        assert t["offset"] % (alignment or 32) == 0
    for name, (qtype, shape, stored) in expected.items():
        if qtype == Q.Q4_K:
            continue
        got = dump(nibble_bin, path, name, tmp_path)
        want = expected_f32(qtype, stored)
        assert got.size == int(np.prod(shape)), name
        if qtype in (Q.F32, Q.F16, Q.BF16):
            np.testing.assert_array_equal(bits(got), bits(want), err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    bad = subprocess.run([nibble_bin, "tensors", "-m", str(path), "--dump", "k.q4_k", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Q4_K" in bad.stderr


def test_gguf_metadata_every_value_type(nibble_bin, tmp_path):
    path = tmp_path / "meta.gguf"
    write_gguf(path, np.random.default_rng(3))
    meta = listing(nibble_bin, path)["metadata"]
    assert meta["general.architecture"] == {"type": int(gguf.GGUFValueType.STRING), "value": "llama"}
    for key, value, vtype in METADATA:
        assert meta[key]["type"] == int(vtype), key
        got = meta[key]["value"]
        if vtype == gguf.GGUFValueType.FLOAT32:
            assert np.float32(got) == np.float32(value), key
            assert got == float(np.float32(value)), key  # the stored f32, widened exactly
        else:
            assert got == value, key
    for key, value, vtype in ARRAYS:
        assert meta[key]["type"] == int(gguf.GGUFValueType.ARRAY), key
        assert meta[key]["array_type"] == int(vtype), key
        if vtype == gguf.GGUFValueType.FLOAT32:
            assert meta[key]["value"] == [float(np.float32(v)) for v in value], key
        else:
            assert meta[key]["value"] == value, key
    assert meta["a.nested"]["array_type"] == int(gguf.GGUFValueType.ARRAY)  # parsed and skipped
    assert meta["a.after_nested"]["value"] == ["still", "parsed"]


def test_gguf_hostile_files_fail_cleanly(nibble_bin, tmp_path):
    path = tmp_path / "h.gguf"
    write_gguf(path, np.random.default_rng(4))
    data = bytearray(path.read_bytes())
    cases = {
        "not a GGUF": b"GGUX" + data[4:],
        "v1": data[:4] + struct.pack("<I", 1) + data[8:],
        "huge tensor count": data[:8] + struct.pack("<Q", 2**62) + data[16:],
        "huge kv count": data[:16] + struct.pack("<Q", 2**40) + data[24:],
        "truncated": data[: len(data) // 2],
    }
    for what, content in cases.items():
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(bytes(content))
        r = subprocess.run([nibble_bin, "tensors", "-m", str(bad)], capture_output=True, text=True, timeout=20)
        assert r.returncode in (1, 2), (what, r.returncode)  # an error exit, not a signal
        assert r.stderr.startswith("nibble tensors:"), (what, r.stderr)


def test_smollm2_matches_gguf_reader(nibble_bin, tmp_path):
    if not SMOLLM2.exists():
        pytest.skip("SmolLM2 GGUF missing: run scripts/setup.sh")
    reader = gguf.GGUFReader(str(SMOLLM2))
    info = listing(nibble_bin, SMOLLM2)
    assert [t["name"] for t in info["tensors"]] == [t.name for t in reader.tensors]
    for ours, ref in zip(info["tensors"], reader.tensors):
        assert ours["shape"] == [int(x) for x in reversed(ref.shape)], ref.name
        assert ours["dtype"] == ref.tensor_type.name
        assert ours["bytes"] == ref.n_bytes
        assert ours["offset"] == ref.data_offset
    meta = info["metadata"]
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header fields, not metadata
        assert meta[key]["type"] == int(field.types[0]), key
        want = field.contents()
        got = meta[key]["value"]
        if field.types[0] == gguf.GGUFValueType.FLOAT32:
            assert got == float(np.float32(want)), key
        elif field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] == gguf.GGUFValueType.FLOAT32:
            assert got == [float(np.float32(v)) for v in want], key
        else:
            assert got == want, key
    by_name = {t.name: t for t in reader.tensors}
    for name in ["blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight", "token_embd.weight"]:
        t = by_name[name]
        got = dump(nibble_bin, SMOLLM2, name, tmp_path)
        if t.tensor_type == Q.F32:
            want = np.asarray(t.data, dtype=np.float32).reshape(-1)
            np.testing.assert_array_equal(bits(got), bits(want), err_msg=name)
        else:
            np.testing.assert_array_equal(got, dequantize(t.data, t.tensor_type).reshape(-1), err_msg=name)


def write_safetensors_bf16(path, tensors):
    """Spec-level writer for BF16 (numpy has no bf16 dtype, so safetensors.numpy cannot write it)."""
    header, blob = {}, b""
    for name, raw, shape in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob)


def test_safetensors_lists_and_dumps_exactly(nibble_bin, tmp_path):
    rng = np.random.default_rng(5)
    arrays = {
        "f32.a": rng.standard_normal((3, 64)).astype(np.float32),
        "f16.b": rng.standard_normal((2, 5, 32)).astype(np.float16),
        "f32.c": rng.standard_normal((7,)).astype(np.float32),
        "i32.d": rng.integers(-1000, 1000, size=(4, 4)).astype(np.int32),
        "i8.e": rng.integers(-128, 128, size=(8,)).astype(np.int8),
        "i64.f": rng.integers(0, 10, size=(2, 2)).astype(np.int64),
    }
    path = tmp_path / "x.safetensors"
    save_file(arrays, str(path), metadata={"format": "np"})
    info = listing(nibble_bin, path)
    assert info["format"] == "safetensors"
    tensors = {t["name"]: t for t in info["tensors"]}
    assert set(tensors) == set(arrays)
    names = {np.float32: "F32", np.float16: "F16", np.int32: "I32", np.int8: "I8", np.int64: "I64"}
    for name, a in arrays.items():
        assert tuple(tensors[name]["shape"]) == a.shape
        assert tensors[name]["dtype"] == names[a.dtype.type]
        assert tensors[name]["bytes"] == a.nbytes
        if a.dtype == np.int64:
            r = subprocess.run([nibble_bin, "tensors", "-m", str(path), "--dump", name, "-o", str(tmp_path / "o")],
                               capture_output=True, text=True)
            assert r.returncode != 0 and "I64" in r.stderr
            continue
        got = dump(nibble_bin, path, name, tmp_path)
        np.testing.assert_array_equal(bits(got), bits(a.astype(np.float32).reshape(-1)), err_msg=name)

    bf = rng.standard_normal((6, 32)).astype(np.float32)
    raw = (bf.view(np.uint32) >> 16).astype("<u2").tobytes()  # truncation: any 16-bit pattern is valid bf16
    bpath = tmp_path / "bf.safetensors"
    write_safetensors_bf16(bpath, [("w", raw, bf.shape)])
    assert listing(nibble_bin, bpath)["tensors"][0]["dtype"] == "BF16"
    np.testing.assert_array_equal(bits(dump(nibble_bin, bpath, "w", tmp_path)), bits(bf16_bytes_to_f32(raw)))


def test_hf_directory_listing(nibble_bin, tmp_path):
    rng = np.random.default_rng(6)
    a = {"model.embed_tokens.weight": rng.standard_normal((8, 32)).astype(np.float16)}
    b = {"lm_head.weight": rng.standard_normal((8, 32)).astype(np.float32)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    info = listing(nibble_bin, tmp_path)
    assert sorted(t["name"] for t in info["tensors"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    got = dump(nibble_bin, tmp_path, "model.embed_tokens.weight", tmp_path)
    np.testing.assert_array_equal(bits(got), bits(a["model.embed_tokens.weight"].astype(np.float32).reshape(-1)))


def test_llama2c_model_listing_matches_raw_file(nibble_bin, tmp_path):
    """stories260K through load_model: tensors named by ModelWeights fields, values read by numpy."""
    raw = np.fromfile(STORIES, dtype="<f4", offset=28)
    dim, hidden, layers, heads, kv_heads, vocab, seq = np.fromfile(STORIES, dtype="<i4", count=7)
    assert (dim, hidden, layers, heads, kv_heads, vocab, seq) == (64, 172, 5, 8, 4, 512, 512)
    info = listing(nibble_bin, STORIES)
    assert info["format"] == "llama2c"
    assert len(info["tensors"]) == 2 + 9 * layers  # embeddings, final norm, 9 per layer (tied output)
    off_wq = vocab * dim + layers * dim
    wq1 = raw[off_wq + dim * dim : off_wq + 2 * dim * dim]  # layer 1, [out=64, in=64]
    np.testing.assert_array_equal(bits(dump(nibble_bin, STORIES, "layers.1.wq", tmp_path)), bits(wq1))
    kv = kv_heads * (dim // heads)
    off_w2 = off_wq + layers * (2 * dim * dim + 2 * kv * dim) + layers * dim + layers * hidden * dim
    w2_4 = raw[off_w2 + 4 * dim * hidden : off_w2 + 5 * dim * hidden]
    np.testing.assert_array_equal(bits(dump(nibble_bin, STORIES, "layers.4.w_down", tmp_path)), bits(w2_4))
