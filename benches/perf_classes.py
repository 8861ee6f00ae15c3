#!/usr/bin/env python3
"""Groups `perf report --sort symbol --stdio` lines (stdin) into op classes; prints the share of
each class overall and of the non-load samples (the step itself)."""
import re
import sys

CLASSES = [
    ("load (gguf read, repack)", r"gguf_file|ggml_file|qtensor_from|QWeight::from_raw|from_qtensor|Weights::|Decoder::load|safetensors|mmap"),
    ("matmul: flare qgemm", r"flare::cpu::qgemm"),
    ("matmul: candle quantized", r"quantized::k_quants|quantized::avx|repack_x86|BlockQ"),
    ("matmul: candle dense (gemm)", r"gemm|sgemm|matmul"),
    ("attention", r"flare::layers::attention|flare::cpu::attention|PagedAttention"),
    ("sampling / logprobs", r"flare::sample|flare::ops::sampling"),
    ("tokenizer / detokenize", r"tokenizers|flare::tokenizer|regex|onig"),
    ("norm / rotary / activations (candle ops)", r"candle_nn::ops|rms_norm|Rotary|rope|silu|expf|exp|tanh|unary_map|binary_map|cpu_backend|index_select|copy_strided|Tensor::"),
    ("memcpy / alloc", r"memmove|memcpy|memset|malloc|free|_int_|realloc|clear_page"),
    ("threads: rayon / spin / sched", r"rayon|crossbeam|sched|futex|spin|yield|barrier|park"),
    ("kernel (other)", r"^\[k\]"),
]


def main():
    totals = {}
    top = {}
    for line in sys.stdin:
        m = re.match(r"\s*([\d.]+)%\s+(\[[.k]\])\s+(.*?)\s*$", line)
        if not m:
            continue
        pct, where, sym = float(m.group(1)), m.group(2), m.group(3)
        key = f"{where} {sym}"
        cls = "other"
        for name, pat in CLASSES:
            if re.search(pat, sym) or (pat.startswith("^\\[k") and where == "[k]"):
                cls = name
                break
        totals[cls] = totals.get(cls, 0.0) + pct
        top.setdefault(cls, []).append((pct, sym[:90]))
    load = totals.get(CLASSES[0][0], 0.0)
    rest = max(100.0 - load, 1e-9)
    print(f"{'class':44s} {'% all':>7s} {'% of step':>9s}")
    for cls, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        step = "" if cls == CLASSES[0][0] else f"{100 * pct / rest:9.1f}"
        print(f"{cls:44s} {pct:7.1f} {step:>9s}")
        for p, s in sorted(top[cls], reverse=True)[:3]:
            if p >= 0.5:
                print(f"    {p:5.1f}  {s}")


main()
