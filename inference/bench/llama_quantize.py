#!/usr/bin/env python3
"""Quantises a GGUF with llama.cpp's own quantiser (llama-cpp-python's `llama_model_quantize`,
the code behind `llama-quantize`), so ward's K-quant kernels are measured and checked on files
laid out as llama.cpp lays them out: Q4_K_M keeps attn_v and ffn_down of some layers and the
output head in Q6_K beside Q4_K, as real Q4_K_M models do.

Usage: llama_quantize.py IN.gguf OUT.gguf q4_k_m|q4_k_s|q5_k_m|q6_k|q8_0
Prints `SKIP: <why>` and exits 0 when llama_cpp cannot be imported. Writes OUT through a
temporary name, so an interrupted run leaves no file that looks finished.
"""
import os
import sys

TYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in TYPES:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, kind = sys.argv[1:]
    try:
        import llama_cpp
    except Exception as e:  # noqa: BLE001
        print(f"SKIP: llama.cpp unavailable ({e.__class__.__name__}: {e})")
        return 0
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[kind])
    params.nthread = int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
    partial = dst + ".partial"
    rc = llama_cpp.llama_model_quantize(src.encode(), partial.encode(), params)
    if rc != 0:
        print(f"llama_model_quantize failed: {rc}", file=sys.stderr)
        return 1
    os.replace(partial, dst)
    print(f"{dst}: {kind} by llama.cpp {llama_cpp.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
