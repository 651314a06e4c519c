"""nibble eval ppl / kld against a float64 numpy forward (llama_ref.py) on stories260K: the same
token stream (from nibble tokenize), windows cut by Hugging Face's perplexity recipe written out
here independently, the same mean negative log-likelihood / KL divergence / top-1 agreement."""
import json
import subprocess

import numpy as np
import pytest

import llama_ref
from conftest import SHARED

MODEL = SHARED / "stories260K" / "stories260K.bin"
TOK = SHARED / "stories260K" / "tok512.model"
TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog. "
        "One day, she saw a big red ball under a tree. She ran to the ball and kicked it very high. The ball went over "
        "the fence and into the garden of an old man. Lily was scared, but she knocked on the door and said sorry. "
        "The old man smiled and gave her the ball back. He said, \"You can play in my garden any time.\" Lily was "
        "happy and they became good friends.\n\nThe next day, Tom and his mom went to the shop to buy some bread.")


def token_ids(nibble_bin):
    r = subprocess.run([nibble_bin, "tokenize", "-m", str(TOK), "-f", "-", "--json-input", "--ids", "--no-special"],
                       input=json.dumps(TEXT) + "\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[0])


def hf_windows(n, ctx, stride):
    """transformers' 'Perplexity of fixed-length models': (begin, end, number of scored targets)."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        trg_len = end - prev_end
        out.append((begin, end, trg_len))
        prev_end = end
        if end == n:
            break
    return out


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def run_json(nibble_bin, *args):
    r = subprocess.run([nibble_bin, "eval", *args, "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "window" in r.stderr  # the progress line
    return json.loads(r.stdout)


# batch: --batch-tokens, the forward chunk a window runs in (7: a 200-token window in 29 chunks).
@pytest.mark.parametrize("ctx,stride,every,batch", [(64, None, 1, None), (64, 24, 1, None), (200, None, 1, None),
                                                    (64, 24, 3, None), (64, None, 2, None), (200, None, 1, 7),
                                                    (64, 24, 1, 1000)])
def test_ppl_matches_numpy(nibble_bin, tmp_path, ctx, stride, every, batch):
    ids = token_ids(nibble_bin)
    assert ids[0] == 1 and len(ids) > 200  # BOS once at the start (the tokenizer adds BOS)
    cfg, w = llama_ref.read_llama2c(str(MODEL))
    nll, count = 0.0, 0
    for i, (begin, end, trg) in enumerate(hf_windows(len(ids), ctx, stride or ctx)):
        if i % every:  # --every K: windows 0, K, 2K, ... each scoring what it scores in the full run
            continue
        lp = log_softmax(llama_ref.forward(cfg, w, ids[begin:end]))
        L = end - begin
        for t in range(max(1, L - trg), L):  # target t predicted at position t - 1
            nll -= lp[t - 1, ids[begin + t]]
            count += 1
    args = ["ppl", "-m", str(MODEL), "--tokenizer", str(TOK), "--ctx", str(ctx)]
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    if stride:
        args += ["--stride", str(stride)]
    if every > 1:
        args += ["--every", str(every)]
    if batch:
        args += ["--batch-tokens", str(batch)]
    got = run_json(nibble_bin, *args, "--data", str(data))
    assert got["scored_tokens"] == count
    assert got["ppl"] == pytest.approx(np.exp(nll / count), rel=1e-5)


def test_kld_matches_numpy(nibble_bin, tmp_path):
    # The "model": stories260K with every weight perturbed by 3% noise (same llama2.c layout).
    raw = np.fromfile(MODEL, dtype=np.uint8)
    header, weights = raw[:28], np.frombuffer(raw[28:].tobytes(), dtype=np.float32)
    rng = np.random.default_rng(0)
    noisy = (weights * (1 + 0.03 * rng.standard_normal(weights.shape))).astype(np.float32)
    other = tmp_path / "noisy.bin"
    other.write_bytes(header.tobytes() + noisy.tobytes())
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    ids = token_ids(nibble_bin)
    cfg_r, w_r = llama_ref.read_llama2c(str(MODEL))
    cfg_m, w_m = llama_ref.read_llama2c(str(other))
    kl, agree, count = 0.0, 0, 0
    for begin, end, trg in hf_windows(len(ids), 64, 64):
        pr = log_softmax(llama_ref.forward(cfg_r, w_r, ids[begin:end]))
        pm = log_softmax(llama_ref.forward(cfg_m, w_m, ids[begin:end]))
        for t in range(max(1, (end - begin) - trg), end - begin):
            kl += np.sum(np.exp(pr[t - 1]) * (pr[t - 1] - pm[t - 1]))
            agree += int(np.argmax(pr[t - 1]) == np.argmax(pm[t - 1]))
            count += 1
    got = run_json(nibble_bin, "kld", "-m", str(other), "--ref", str(MODEL), "--tokenizer", str(TOK), "--data", str(data),
                   "--ctx", "64", "--batch-tokens", "13")  # both models run each window in chunks of 13
    assert got["scored_tokens"] == count
    assert kl / count > 1e-3  # the perturbation is visible
    assert got["kld"] == pytest.approx(kl / count, rel=1e-3)
    assert abs(got["top1_agreement"] * count - agree) <= 1  # a near-tie may flip in f32
    assert got["top1_agreement"] < 1.0


def test_eval_errors(nibble_bin, tmp_path):
    r = subprocess.run([nibble_bin, "eval", "ppl", "-m", str(MODEL), "--tokenizer", str(TOK)], capture_output=True, text=True)
    assert r.returncode != 0 and "--data" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = subprocess.run([nibble_bin, "eval", "ppl", "-m", str(MODEL), "--tokenizer", str(TOK), "--data", str(empty)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "empty" in r.stderr
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    r = subprocess.run([nibble_bin, "eval", "ppl", "-m", str(MODEL), "--tokenizer", str(TOK), "--data", str(text),
                        "--ctx", "4096"], capture_output=True, text=True)
    assert r.returncode != 0 and "exceeds the model's context" in r.stderr, r.stderr
    r = subprocess.run([nibble_bin, "eval", "kld", "-m", str(MODEL), "--tokenizer", str(TOK), "--data", str(text)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--ref" in r.stderr
