#!/usr/bin/env python3
"""Baseline for bench-infer: the same model in PyTorch `transformers`, in float32 on the CPU with
all cores (or $RAYON_NUM_THREADS, as ward), or in bfloat16 on a GPU (`--device cuda:N`, as ward
runs safetensors there), fed the same prompt token ids, prefilled in one pass and decoded greedily
for the same number of tokens. Each decode step hands its token to the host (`.item()`), as ward's
does and as a server streaming tokens must; GPU timings end with a synchronize.

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
    ap.add_argument("--device", default="cpu")
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
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"SKIP: torch sees no CUDA device for {a.device}")
        return 0
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(where, torch_dtype=dtype, **kw)
    model.to(device).eval()
    ids = torch.tensor([[int(i) for i in a.ids.split(",")]], device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    pre, dec, first = [], [], None
    with torch.inference_mode():
        # Warm-up at the measured shapes: each round is a fresh process, and a GPU's first call
        # of each kernel pays for loading and tuning it; on a GPU, cuDNN's attention also builds
        # a plan per sequence length, so the warm-up there is a whole round (the steady state).
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(4 if device.type == "cpu" else a.gen_tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        nxt.item()
        sync()
        for _ in range(a.runs):
            t = time.perf_counter()
            out = model(ids, use_cache=True)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            first = int(nxt[0, 0].item())
            pre.append(ids.shape[1] / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(a.gen_tokens):
                out = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                nxt.item()  # the host sees each token
            sync()
            dec.append(a.gen_tokens / (time.perf_counter() - t))
    print(f"RESULT {statistics.median(pre):.3f} {statistics.median(dec):.3f} {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
