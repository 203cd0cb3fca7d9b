"""Weights out to transformers from the command line: a training checkpoint written as a
transformers checkpoint folder (interop.save_pretrained), which AutoModelForCausalLM /
AutoTokenizer.from_pretrained, the hub and the tools that read hub checkpoints load with
no code of ours:

    python -m qwen_minimal export --checkpoint runs/cpu-tiny --out exported/cpu-tiny

The folder holds config.json, generation_config.json, the weights (model.safetensors, or
shards listed in model.safetensors.index.json past --max_shard_size) under the hub's
tensor names, one tensor per expert as in the released Qwen3-MoE checkpoints, and the
tokenizer's files. What transformers' Qwen3 cannot represent (an expert capacity, a
bias-balanced router) is refused with an InputError.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import sys
from pathlib import Path

import torch

from ..errors import InputError
from ..files import cannot_write
from ..interop import (
    EXPORT_MARKER,
    llama_cpp_caveats,
    save_pretrained,
    tokenizer_mismatch,
)
from ..training import checkpoint
from ..training.loop import LOCK_FILE, METRICS_FILE
from .options import exit_on_input_error

# What an export writes (weights, their index, configs, the tokenizer's files): a
# folder holding nothing else is an export, made before exports carried EXPORT_MARKER.
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def shard_size(text: str) -> int | str:
    """--max_shard_size: bytes, or a number with a unit (KB, MB, GB or TB, powers of
    1000), as the hub writes it."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+(KB|MB|GB|TB)", text.upper()):
        return text.upper()
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a size: write it like 5GB, 500MB or 1000000 (bytes)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal export",
        allow_abbrev=False,
        description="Write a qwen_minimal training checkpoint as a transformers "
        "checkpoint folder (Qwen3 or "
        "Qwen3-MoE), which AutoModelForCausalLM.from_pretrained and "
        "AutoTokenizer.from_pretrained load.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run's output folder (e.g. runs/cpu-tiny) or its checkpoint/ folder",
    )
    parser.add_argument(
        "--out", required=True, help="the folder to write (created if needed)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="dtype of the saved weights (default float32, exact; bfloat16 halves "
        "the size)",
    )
    parser.add_argument(
        "--max_shard_size",
        default="5GB",
        type=shard_size,
        help='largest weight file, e.g. "5GB" or "500MB"; bigger models are sharded '
        "(default 5GB)",
    )
    return parser


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a training run's output folder."""
    return any(
        (folder / name).exists()
        for name in (checkpoint.CHECKPOINT_DIR, METRICS_FILE, LOCK_FILE)
    )


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an earlier export: a config.json with EXPORT_MARKER, or
    a config.json and weights among only the files an export writes."""
    try:
        if EXPORT_MARKER in json.loads((folder / "config.json").read_text()):
            return True
    except (OSError, ValueError, TypeError):  # none, or not ours: look at the names
        pass
    names = [p.name for p in folder.iterdir()]
    return (
        "config.json" in names
        and any(fnmatch.fnmatch(name, "model*.safetensors") for name in names)
        and all(
            any(fnmatch.fnmatch(name, pattern) for pattern in EXPORT_FILES)
            for name in names
        )
    )


def check_destination(out: Path) -> None:
    """InputError unless `out` may receive an export: not a training run's folder, nor
    its checkpoint or anything inside that (the export's config.json and weights would
    replace the run's), and either empty or an earlier export, which it replaces."""
    out = out.expanduser().resolve()
    for run in (out, *out.parents):
        inside = out.relative_to(run).parts
        if is_run_folder(run) and (
            not inside or inside[0].startswith(checkpoint.CHECKPOINT_DIR)
        ):
            raise InputError(
                f"--out {out} is {'inside ' if inside else ''}the training run "
                f"{run}, which the export would overwrite: choose a folder outside "
                f"it, e.g. {run.parent / (run.name + '-hf')}"
            )
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise InputError(
            f"--out {out} holds files that are not an export, which the export "
            "would mix with: choose an empty folder or an earlier export"
        )


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_destination(Path(args.out))
    model, tokenizer = (
        checkpoint.load_model(args.checkpoint),
        checkpoint.saved_tokenizer(args.checkpoint),
    )
    if tokenizer is None:
        print(
            f"# WARNING: {checkpoint.find_checkpoint(args.checkpoint)} holds no "
            "tokenizer, so the exported "
            f"folder has none either: AutoTokenizer.from_pretrained will not load it",
            file=sys.stderr,
        )
    try:
        folder = save_pretrained(
            model, args.out, tokenizer, DTYPES[args.dtype], args.max_shard_size
        )
    except OSError as e:  # a read-only folder, a file in the way, a full disk
        raise cannot_write(args.out, e, "choose another --out") from None
    for file in sorted(folder.iterdir()):
        print(f"{file.stat().st_size:>14,} bytes  {file}")
    mismatch = tokenizer is not None and tokenizer_mismatch(folder, tokenizer)
    if mismatch:
        print(f"# WARNING: {mismatch}", file=sys.stderr)
    caveats = llama_cpp_caveats(model.config)
    if caveats:
        print(
            f"# WARNING: llama.cpp will not honour {'; '.join(caveats)}",
            file=sys.stderr,
        )
    print(
        "# load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r})",
        file=sys.stderr,
    )
