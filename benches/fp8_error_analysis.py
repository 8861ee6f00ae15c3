#!/usr/bin/env python3
"""Where SmolLM2-135M loses quality under `--quantization fp8`, computed independently of flare
with transformers (f32) and torch's own float8_e4m3fn casts.

The scheme is flare's (and the issue's): every q/k/v/o/gate/up/down projection gets e4m3
weights with one scale per output channel (amax/448) and its input e4m3 with one dynamic scale
per token (amax/448); embeddings and the tied lm_head stay f32. The text is chunked as
`flare eval perplexity` / llama-perplexity do (chunks of 512 tokens, no BOS, the second half
of each chunk scored), so the f32 and fp8 numbers here reproduce flare's.

Reports PPL for: f32; fp8 (weights + activations); weights only; activations only; each
projection kind alone; and the per-layer relative output error of every projection.

    python3 benches/fp8_error_analysis.py [--chunks 8] [--threads 1]
"""
import argparse
import math
import os

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

FP8_MAX = 448.0
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.expanduser("~/.cache/flare/models/SmolLM2-135M-Instruct-hf")
TEXT = os.path.join(HERE, "data", "kjv_genesis.txt")
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fp8_rows(x):
    """Each row (last dim) of x on the e4m3 grid with scale amax/448, back in f32."""
    s = (x.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=1e-30)
    return (x / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32) * s


def projections(model):
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in KINDS:
            yield name, m


class Scheme:
    """Installs fake quantization on the projections `select(name)` picks."""

    def __init__(self, model, weights, acts, select=lambda n: True):
        self.saved, self.hooks = {}, []
        for name, m in projections(model):
            if not select(name):
                continue
            if weights:
                self.saved[name] = m.weight.data.clone()
                m.weight.data = fp8_rows(m.weight.data)
            if acts:
                self.hooks.append(m.register_forward_pre_hook(lambda _m, a: (fp8_rows(a[0]),)))
        self.model = model

    def undo(self):
        for name, m in projections(self.model):
            if name in self.saved:
                m.weight.data = self.saved[name]
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def ppl(model, chunks):
    nll, n = 0.0, 0
    for ids in chunks:
        logits = model(ids[None]).logits[0].float()
        half = ids.shape[0] // 2
        lp = torch.log_softmax(logits[half:-1], -1)
        nll += -lp.gather(1, ids[half + 1 :, None]).sum().item()
        n += ids.shape[0] - 1 - half
    return math.exp(nll / n)


@torch.no_grad()
def layer_errors(model, chunk):
    """Relative error ||y_q - y|| / ||y|| of every projection on the f32 model's own inputs,
    weights and activations quantized, and which half dominates."""
    rows = []

    def hook(name):
        def f(m, a, y):
            x = a[0]
            wq = fp8_rows(m.weight)
            full = torch.nn.functional.linear(fp8_rows(x), wq)
            w_only = torch.nn.functional.linear(x, wq)
            a_only = torch.nn.functional.linear(fp8_rows(x), m.weight)
            r = lambda z: ((z - y).norm() / y.norm()).item()
            ratio = (x.abs().amax(-1) / x.abs().mean(-1)).median().item()
            rows.append((name, r(full), r(w_only), r(a_only), ratio))

        return f

    hooks = [m.register_forward_hook(hook(n)) for n, m in projections(model)]
    model(chunk[None])
    for h in hooks:
        h.remove()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    ids = tok.encode(open(TEXT).read(), add_special_tokens=False).ids
    chunks = [torch.tensor(ids[i * args.ctx : (i + 1) * args.ctx]) for i in range(args.chunks)]
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    print(f"# {len(ids)} tokens; {args.chunks} chunks x {args.ctx}; torch {torch.__version__}, "
          f"{args.threads} threads")
    base = ppl(model, chunks)
    print(f"f32                      PPL {base:.4f}")

    def run(label, **kw):
        s = Scheme(model, **kw)
        p = ppl(model, chunks)
        s.undo()
        print(f"{label:24} PPL {p:.4f}  ({100 * (p / base - 1):+.2f}%)", flush=True)

    run("fp8 weights+activations", weights=True, acts=True)
    run("fp8 weights only", weights=True, acts=False)
    run("fp8 activations only", weights=False, acts=True)
    for k in KINDS:
        run(f"fp8 only {k}", weights=True, acts=True, select=lambda n, k=k: n.endswith(k))
    print("# per projection: relative output error (w+a, weights only, activations only), "
          "median over tokens of max|x|/mean|x| of the input")
    for name, full, w, a, ratio in layer_errors(model, chunks[0]):
        print(f"{name:40} {full:.4f} {w:.4f} {a:.4f}  outlier ratio {ratio:7.1f}")


if __name__ == "__main__":
    main()
