#!/usr/bin/env python3
"""Compares nibble's GPU logits with Hugging Face transformers on the same checkpoint (GPU machine).

usage: gpu_hf_compare.py NIBBLE MODEL_DIR DTYPE [NUM_TOKENS]

Runs transformers' LlamaForCausalLM (torch, CUDA, eager attention) in f32 and in DTYPE (f16 or bf16),
and `nibble logits --device cuda --dtype DTYPE`, over the same token ids. Prints, for nibble against
HF at the same dtype (the pairwise check) and for both against HF in f32 (the reference): the relative
L2 error of the logits over all positions, the max abs error relative to the logits' std, and top-1
agreement. It passes (exit status 0) if either
  - the pairwise relative error is within the bound (3e-2 for f16, 6e-2 for bf16) and top-1
    agreement with HF at DTYPE is >= 95%, or
  - nibble is as close to the f32 reference as HF's own DTYPE run is: its relative error at most
    1.25x HF's, and its top-1 agreement with the f32 reference at most 3 points below HF's.
The second test is the one that scales with the dtype: two independent half-precision runs differ by
about twice either one's rounding error, which for bf16 (2^-8) is 8x that of f16 (2^-11).
"""
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import LlamaForCausalLM


def stats(got, ref):
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    max_err = float(np.abs(got - ref).max() / ref.std())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    return rel, max_err, top1


def main():
    nibble, model_dir, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    torch_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    ids = [1] + rng.integers(3, vocab, n - 1).tolist()
    with torch.no_grad():
        x = torch.tensor([ids], device="cuda")
        ref32 = model(x).logits[0].float().cpu().numpy()
        model = model.to(torch_dtype)  # the checkpoint's values rounded to DTYPE, as loading at DTYPE does
        ref = model(x).logits[0].float().cpu().numpy()
    del model
    torch.cuda.empty_cache()
    with tempfile.NamedTemporaryFile(suffix=".f32") as f:
        subprocess.run([nibble, "logits", "-m", model_dir, "--device", "cuda", "--dtype", dtype,
                        "--ids", ",".join(map(str, ids)), "-o", f.name], check=True)
        got = np.fromfile(f.name, dtype=np.float32).reshape(n, vocab)
    rel, max_err, top1 = stats(got, ref)
    bound = {"f16": 3e-2, "bf16": 6e-2}[dtype]
    pair_ok = rel <= bound and top1 >= 0.95
    print(f"hf-compare {dtype}: {n} positions, vocab {vocab}: relative L2 error {rel:.2e} (bound {bound:.0e}), "
          f"max |err| / std(logits) {max_err:.2e}, top-1 agreement {top1 * 100:.1f}% -> "
          f"{'ok' if pair_ok else 'over the bound'}")
    ours = stats(got, ref32)
    theirs = stats(ref, ref32)
    ref_ok = ours[0] <= 1.25 * theirs[0] and ours[2] >= theirs[2] - 0.03
    print(f"hf-compare {dtype} vs HF f32: nibble relative L2 {ours[0]:.2e}, max |err| / std {ours[1]:.2e}, "
          f"top-1 {ours[2] * 100:.1f}%; HF {dtype} relative L2 {theirs[0]:.2e}, max |err| / std {theirs[1]:.2e}, "
          f"top-1 {theirs[2] * 100:.1f}% -> {'ok' if ref_ok else 'FAILED'} (nibble within 1.25x HF's error)")
    ok = pair_ok or ref_ok
    print(f"hf-compare {dtype}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
