#!/usr/bin/env python3
"""Baseline for bench-infer: the same GGUF in PyTorch `transformers` (dequantised to f32 on load),
same prompt length and greedy decode length, on the CPU with all cores.

Prints `RESULT <prefill tok/s> <decode tok/s>`, or `SKIP: <why>` when torch/transformers/gguf are
not installed (`pip install torch transformers gguf`; PyPI's torch wheel is the CUDA build).
"""
import argparse
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: PyTorch baseline unavailable ({e.__class__.__name__}: {e})")
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    text = "The quick brown fox jumps over the lazy dog while the sun sets behind the hills. "
    ids = []
    while len(ids) < a.prompt_tokens:
        ids += tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids[: a.prompt_tokens]])
    pre, dec = [], []
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        for _ in range(a.runs):
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            pre.append(ids.shape[1] / (time.perf_counter() - t))
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for _ in range(a.gen_tokens):
                out = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            dec.append(a.gen_tokens / (time.perf_counter() - t))
    print(f"RESULT {statistics.median(pre):.2f} {statistics.median(dec):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
