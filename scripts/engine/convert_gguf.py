"""Turn a GGUF checkpoint into a safetensors model directory that vLLM loads (run by setup_smollm2.sh).

Usage, with the engine venv's python and the converter's extra packages (gguf, accelerate) on
PYTHONPATH only for this run, so that they never change the engine venv:

    PYTHONPATH=DEPS $ADAPTER_ENGINE_HOME/venv/bin/python scripts/engine/convert_gguf.py MODEL.gguf OUT_DIR

The weights are dequantised to bfloat16: vLLM's CPU backend cannot run GGUF's Q4_1 blocks, and a
135M-parameter model is only ~270 MB in bf16. transformers reads the tokenizer (tokenizer.json) and
the chat template from the GGUF metadata.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


def convert(gguf: Path, out: Path) -> None:
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # The model is dequantised in memory, but transformers still remembers it came from GGUF and
    # refuses to save it ("quantized with GGUF, not serializable"); what it would save is plain bf16.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise SystemExit(f"convert_gguf: expected bfloat16 weights after dequantising, got {sorted(map(str, dtypes))}")
    if tokenizer.chat_template is None:
        raise SystemExit(f"convert_gguf: {gguf.name} carries no chat template; vLLM's chat endpoint needs one")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"convert_gguf: {type(model).__name__}, {parameters / 1e6:.1f}M parameters, bfloat16 -> {out}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: convert_gguf.py MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    gguf, out = Path(argv[0]).resolve(), Path(argv[1])
    if not gguf.is_file():
        print(f"convert_gguf: {gguf} not found", file=sys.stderr)
        return 2
    convert(gguf, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
