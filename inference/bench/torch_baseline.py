#!/usr/bin/env python3
"""Baseline for bench-infer: the same model in PyTorch `transformers`, in float32 on the CPU with
all cores (or $RAYON_NUM_THREADS, as ward), fed the same prompt token ids, prefilled in one pass and decoded greedily for the same
number of tokens.

MODEL is a safetensors directory (config.json + *.safetensors, e.g. written by gen-bench-model),
loaded with `AutoModelForCausalLM` (`LlamaForCausalLM` for those), or a GGUF file (transformers
dequantises it to float32 on load; needs the `gguf` package too).

Prints `RESULT <prefill tok/s> <decode tok/s> <first greedy token>`, or `SKIP: <why>` when torch
or transformers is missing (`pip install torch transformers safetensors` in a virtual environment
outside the repository; PyPI's torch wheel is the CUDA build, several GB).
"""
import argparse
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM
        if not os.path.isdir(a.model):
            import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: PyTorch baseline unavailable ({e.__class__.__name__}: {e})")
        return 0
    # All cores, or as many threads as ward's rayon pool was given (bench-infer's environment).
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1))
    if os.path.isdir(a.model):
        where, kw = a.model, {}
    else:
        where, kw = os.path.split(os.path.abspath(a.model))
        kw = {"gguf_file": kw}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(where, torch_dtype=torch.float32, **kw)
    model.eval()
    ids = torch.tensor([[int(i) for i in a.ids.split(",")]])
    pre, dec, first = [], [], None
    with torch.inference_mode():
        model(ids[:, :8])  # warm-up
        for _ in range(a.runs):
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            pre.append(ids.shape[1] / (time.perf_counter() - t))
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            first = int(nxt[0, 0])
            t = time.perf_counter()
            for _ in range(a.gen_tokens):
                out = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            dec.append(a.gen_tokens / (time.perf_counter() - t))
    print(f"RESULT {statistics.median(pre):.3f} {statistics.median(dec):.3f} {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
