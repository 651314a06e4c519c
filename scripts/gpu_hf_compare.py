#!/usr/bin/env python3
"""Compares nibble's GPU logits with Hugging Face transformers on the same checkpoint (GPU machine).

usage: gpu_hf_compare.py NIBBLE MODEL_DIR DTYPE [NUM_TOKENS]

Runs transformers' LlamaForCausalLM (torch, CUDA, the given dtype, eager attention) and
`nibble logits --device cuda --dtype DTYPE` over the same token ids and prints, per the issue's
tolerance for fp16/bf16: the relative L2 error of the logits over all positions, the max abs error
relative to the logits' std, and top-1 agreement. Exit status 1 if the relative error exceeds the
bound (3e-2 for f16, 6e-2 for bf16: a few output roundings of 2^-11 / 2^-8 accumulated over the
layers) or top-1 agreement is below 95%.
"""
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import LlamaForCausalLM


def main():
    nibble, model_dir, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    torch_dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch_dtype, attn_implementation="eager")
    model = model.cuda().eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    ids = [1] + rng.integers(3, vocab, n - 1).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids], device="cuda")).logits[0].float().cpu().numpy()
    del model
    torch.cuda.empty_cache()
    with tempfile.NamedTemporaryFile(suffix=".f32") as f:
        subprocess.run([nibble, "logits", "-m", model_dir, "--device", "cuda", "--dtype", dtype,
                        "--ids", ",".join(map(str, ids)), "-o", f.name], check=True)
        got = np.fromfile(f.name, dtype=np.float32).reshape(n, vocab)
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    max_err = float(np.abs(got - ref).max() / ref.std())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    bound = {"f16": 3e-2, "bf16": 6e-2}[dtype]
    ok = rel <= bound and top1 >= 0.95
    print(f"hf-compare {dtype}: {n} positions, vocab {vocab}: relative L2 error {rel:.2e} (bound {bound:.0e}), "
          f"max |err| / std(logits) {max_err:.2e}, top-1 agreement {top1 * 100:.1f}% -> {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
