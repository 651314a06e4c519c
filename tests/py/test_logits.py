"""Logits of nibble's fp32 path vs an independent numpy implementation (tests/py/llama_ref.py)
that reads the same files itself (raw numpy for llama2.c, the `gguf` package for GGUF).
Acceptance: relative error <= 1e-4 on the first 64 positions of a WikiText-2 passage."""
import json
import subprocess

import numpy as np
import pytest

import llama_ref
from conftest import SHARED, SMOLLM2

WIKI = SHARED / "text" / "wikitext-2-raw.test.txt"


def passage():
    lines = [l for l in WIKI.read_text(encoding="utf-8").split("\n") if len(l) > 400]
    return lines[0].strip()


def nibble_logits(nibble_bin, model, ids, tmp_path):
    out = tmp_path / "logits.f32"
    subprocess.run([nibble_bin, "logits", "-m", str(model), "--ids", ",".join(map(str, ids)), "-o", str(out),
                    "--exact"], check=True)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1).astype(np.float64)


def assert_close(ours, ref):
    # Relative error per position: max |ours - ref| / max |ref| over the vocabulary.
    rel = np.abs(ours - ref).max(axis=1) / np.abs(ref).max(axis=1)
    print(f"max relative error {rel.max():.3g} over {len(rel)} positions")
    assert rel.max() <= 1e-4, f"max relative error {rel.max():.3g} at position {rel.argmax()}"
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_stories260k_logits_match_numpy(nibble_bin, tmp_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(SHARED / "stories260K" / "tok512.model"))
    ids = ([sp.bos_id()] + sp.encode(passage()))[:64]
    assert len(ids) == 64
    cfg, w = llama_ref.read_llama2c(SHARED / "stories260K" / "stories260K.bin")
    assert_close(nibble_logits(nibble_bin, SHARED / "stories260K" / "stories260K.bin", ids, tmp_path),
                 llama_ref.forward(cfg, w, ids))


def test_smollm2_logits_match_numpy(nibble_bin, tmp_path):
    if not SMOLLM2.exists():
        pytest.fail(f"{SMOLLM2} missing: run scripts/setup.sh")
    # Token ids from nibble's tokenizer (checked against HF tokenizers in test_tokenizer*).
    res = subprocess.run([nibble_bin, "tokenize", "-m", str(SMOLLM2), "-p", passage(), "--ids"], check=True,
                         capture_output=True, text=True)
    ids = json.loads(res.stdout.strip().splitlines()[0])[:64]
    assert len(ids) == 64
    cfg, w = llama_ref.read_gguf_llama(str(SMOLLM2))
    assert_close(nibble_logits(nibble_bin, SMOLLM2, ids, tmp_path), llama_ref.forward(cfg, w, ids))
