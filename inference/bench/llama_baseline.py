#!/usr/bin/env python3
"""llama.cpp baseline for bench-infer and ward's logits test: the same GGUF in llama.cpp through
llama-cpp-python (target/llama-venv, built from source by scripts/llama-venv.sh), fed the same
prompt token ids, prefilled in one call and decoded greedily token by token, each token handed
to Python (as ward hands each to the caller).

Bench mode prints `RESULT <prefill tok/s> <decode tok/s> <first greedy token> <peak RSS MB>`
(medians of --runs after a warm-up; peak RSS of this process, Python included). `--logits N`
prints one JSON line instead: the first step's logits and N greedy tokens. `SKIP: <why>` when
llama_cpp cannot be imported.
"""
import argparse
import json
import os
import statistics
import sys
import time


def peak_rss_mb():
    """This process's high-water mark (VmHWM: getrusage's ru_maxrss would carry the parent's
    over fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int,
                    default=int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1))
    ap.add_argument("--logits", type=int, default=None, metavar="N",
                    help="print the first step's logits and N greedy tokens as JSON")
    a = ap.parse_args()
    try:
        import numpy as np
        import llama_cpp
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: llama.cpp baseline unavailable ({e.__class__.__name__}: {e})")
        return 0
    ids = [int(i) for i in a.ids.split(",")]
    n_ctx = len(ids) + max(a.gen_tokens, a.logits or 0) + 8
    llm = llama_cpp.Llama(
        model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=n_ctx,
        n_batch=min(max(len(ids), 512), 2048), logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def run(prompt, gen):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        first = int(np.argmax(logits()))
        prefill = len(prompt) / (time.perf_counter() - t)
        t, nxt = time.perf_counter(), first
        for _ in range(gen):
            llm.eval([nxt])
            nxt = int(np.argmax(logits()))
        decode = gen / (time.perf_counter() - t) if gen else 0.0
        return prefill, decode, first

    if a.logits is not None:
        llm.reset()
        llm.eval(ids)
        first = logits().astype(float).tolist()
        tokens, nxt = [], int(np.argmax(first))
        for _ in range(a.logits):
            tokens.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(logits()))
        print(json.dumps({"logits": first, "tokens": tokens}))
        return 0

    run(ids[:8], 2)  # warm-up
    pre, dec, first = [], [], None
    for _ in range(a.runs):
        p, d, first = run(ids, a.gen_tokens)
        pre.append(p)
        dec.append(d)
    rss_mb = peak_rss_mb()
    print(f"RESULT {statistics.median(pre):.3f} {statistics.median(dec):.3f} {first} {rss_mb:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
