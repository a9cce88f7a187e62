#!/usr/bin/env python3
"""llama.cpp baseline for bench-infer and ward's logits test: the same GGUF in llama.cpp through
llama-cpp-python (target/llama-venv, built from source by scripts/llama-venv.sh), fed the same
prompt token ids, prefilled in one call and decoded greedily token by token, each token handed
to Python (as ward hands each to the caller).

Bench mode prints `RESULT <prefill tok/s> <decode tok/s> <first greedy token> <peak RSS MB>`
(medians of --runs after a warm-up; peak RSS of this process, Python included). `--logits N`
prints one JSON line instead: the first step's logits and N greedy tokens. `SKIP: <why>` when
llama_cpp cannot be imported.

`--batch-seqs 1,2,4,8 --prompt-len P` is the multi-sequence baseline of `bench-infer --batch`,
through llama.cpp's own batch API (llama-cpp-python's low-level bindings; the high-level `Llama`
holds one sequence). For each count n: n sequences in one context (`n_seq_max` n, a KV stream
each), sequence i prefilled alone with ids[i:i+P] (so they diverge, as in ward's bench), then
--gen-tokens steps, each ONE `llama_decode` of a batch of n tokens (one per sequence, its own
seq_id and position, logits for each), each sequence's greedy token taken in Python. Only the
steps are timed. Prints `BATCH <n> <decode tok/s summed over the n sequences>` (median of
--runs after a warm-up), and unless --no-check a line `CHECK <n> ...`: how many sequences'
greedy tokens from the batched steps agree with the same sequence decoded alone (a context of
one sequence, one token per `llama_decode`), so that the baseline is known to compute the same
thing as the one-sequence path.
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
    ap.add_argument("--batch-seqs", default=None, metavar="N,N,...",
                    help="multi-sequence decode: BATCH lines for these sequence counts")
    ap.add_argument("--prompt-len", type=int, default=None,
                    help="--batch-seqs: tokens per prompt (default: len(ids) - max count + 1)")
    ap.add_argument("--no-check", action="store_true",
                    help="--batch-seqs: skip the batched vs one-sequence token check")
    ap.add_argument("--flash-attn", choices=["off", "on", "auto"], default="off",
                    help="--batch-seqs: llama.cpp's flash attention (default off, as the "
                         "one-sequence mode's Llama() has it)")
    ap.add_argument("--kv-unified", action="store_true",
                    help="--batch-seqs: one KV buffer for all sequences (default: one each)")
    a = ap.parse_args()
    try:
        import numpy as np
        import llama_cpp
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: llama.cpp baseline unavailable ({e.__class__.__name__}: {e})")
        return 0
    if a.batch_seqs is not None:
        return batch_main(a, np, llama_cpp)
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


def batch_main(a, np, L):
    """--batch-seqs: the multi-sequence decode baseline (see the module docstring)."""
    try:
        from llama_cpp import _logger
        _logger.set_verbose(False)  # llama.cpp's errors still reach stderr
    except Exception:  # noqa: BLE001
        pass
    ids = [int(i) for i in a.ids.split(",")]
    counts = [int(n) for n in a.batch_seqs.split(",")]
    n_max = max(counts)
    plen = a.prompt_len if a.prompt_len is not None else len(ids) - n_max + 1
    steps = a.gen_tokens
    if plen < 1 or len(ids) < plen + n_max - 1:
        print(f"ERROR: {len(ids)} ids are too few for {n_max} prompts of {plen}", file=sys.stderr)
        return 2
    flash = {"off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
             "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO}[a.flash_attn]

    L.llama_backend_init()
    model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
    if not model:
        print(f"ERROR: llama.cpp cannot load {a.model}", file=sys.stderr)
        return 2
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))

    def context(n_seq):
        p = L.llama_context_default_params()
        # Without kv_unified every sequence has its own KV stream of n_ctx / n_seq_max tokens,
        # which llama.cpp rounds up to a multiple of 256 (and then n_ctx to n_seq_max streams,
        # with a warning unless it is already that); with it, all share n_ctx. Either way
        # n_seq streams of prompt + steps plus slack, rounded up so, are room for all.
        p.n_ctx = n_seq * -(-(plen + steps + 16) // 256) * 256
        p.n_batch = p.n_ubatch = max(plen, n_seq)
        p.n_seq_max = n_seq
        p.n_threads = p.n_threads_batch = a.threads
        p.flash_attn_type = flash
        p.kv_unified = a.kv_unified
        ctx = L.llama_init_from_model(model, p)
        if not ctx:
            raise RuntimeError(f"llama_init_from_model failed for {n_seq} sequences")
        return ctx

    def decode(ctx, batch):
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def greedy(ctx, i):
        row = L.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))

    batch = L.llama_batch_init(max(plen, n_max), 0, 1)

    def prefill(ctx, seq, prompt):
        """Sequence `seq` of ctx fed `prompt` in one llama_decode; its first greedy token."""
        for j, tok in enumerate(prompt):
            batch.token[j] = tok
            batch.pos[j] = j
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = 0
        batch.logits[len(prompt) - 1] = 1
        batch.n_tokens = len(prompt)
        decode(ctx, batch)
        return greedy(ctx, len(prompt) - 1)

    def run(ctx, n, p, gen):
        """n sequences prefilled one by one, then `gen` batched steps; tok/s of the steps and
        each sequence's greedy tokens (the prefill's first, then one per step)."""
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        nxt = [prefill(ctx, i, ids[i:i + p]) for i in range(n)]
        tokens = [[t] for t in nxt]
        for j in range(n):  # constant over the steps: sequence j in slot j, logits for each
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = j
            batch.logits[j] = 1
        batch.n_tokens = n
        t = time.perf_counter()
        for step in range(gen):
            for j in range(n):
                batch.token[j] = nxt[j]
                batch.pos[j] = p + step
            decode(ctx, batch)
            nxt = [greedy(ctx, j) for j in range(n)]
            for j in range(n):
                tokens[j].append(nxt[j])
        return n * gen / (time.perf_counter() - t), tokens

    reference = {}  # sequence i decoded alone: its greedy tokens

    def alone(i):
        if i not in reference:
            if "ctx" not in reference:
                reference["ctx"] = context(1)
            ctx = reference["ctx"]
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            toks = [prefill(ctx, 0, ids[i:i + plen])]
            for step in range(steps):
                batch.token[0] = toks[-1]
                batch.pos[0] = plen + step
                batch.n_seq_id[0] = 1
                batch.seq_id[0][0] = 0
                batch.logits[0] = 1
                batch.n_tokens = 1
                decode(ctx, batch)
                toks.append(greedy(ctx, 0))
            reference[i] = toks
        return reference[i]

    try:
        for n in counts:
            ctx = context(n)
            try:
                run(ctx, n, min(8, plen), 2)  # warm-up
                rates, tokens = [], None
                for _ in range(a.runs):
                    r, tokens = run(ctx, n, plen, steps)
                    rates.append(r)
            finally:
                L.llama_free(ctx)
            print(f"BATCH {n} {statistics.median(rates):.3f}", flush=True)
            if not a.no_check:
                refs = [alone(i) for i in range(n)]
                first = sum(t[0] == r[0] for t, r in zip(tokens, refs))
                step1 = sum(t[:2] == r[:2] for t, r in zip(tokens, refs))
                same = sum(t == r for t, r in zip(tokens, refs))
                diverge = [next((k for k, (x, y) in enumerate(zip(t, r)) if x != y), None)
                           for t, r in zip(tokens, refs)]
                print(f"CHECK {n} first {first}/{n} batched-step-1 {step1}/{n} "
                      f"all-{steps + 1} {same}/{n} first-divergence "
                      + ",".join("-" if d is None else str(d) for d in diverge), flush=True)
    finally:
        if reference.get("ctx"):
            L.llama_free(reference["ctx"])
        L.llama_batch_free(batch)
        L.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
