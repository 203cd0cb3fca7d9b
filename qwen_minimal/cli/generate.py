"""Text from a trained checkpoint: `python -m qwen_minimal generate --checkpoint
runs/cpu-tiny --prompt "The"`.

Without --checkpoint it samples from a randomly initialised model, and says so: useful
only to see that the pipeline runs (the text is noise).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from ..data import load_tokenizer
from ..devices import resolve_device
from ..errors import InputError
from ..model.config import PRESETS as MODEL_PRESETS
from ..model.config import ModelConfig
from ..model.decoder import QwenLM
from ..training import TRAIN_PRESETS, checkpoint
from .options import exit_on_input_error


def generate_text(
    model: QwenLM,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
) -> list[str]:
    """num_samples continuations of `prompt` (prompt included), decoded to text. An
    empty prompt starts from the tokenizer's end-of-text token, if it has one."""
    try:
        prompt.encode("utf-8")
    # a lone surrogate: how Python hands on a command-line argument that was not UTF-8
    except UnicodeEncodeError as e:
        raise InputError(
            f"the prompt is not UTF-8 text ({e.reason} at character {e.start}): "
            "give it in UTF-8 (check the terminal's encoding, e.g. LANG=C.UTF-8)"
        ) from None
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if not ids:
        if tokenizer.eos_token_id is None:
            raise InputError(
                "the prompt is empty and the tokenizer has no end-of-text token to "
                "start from: "
                "give a --prompt"
            )
        ids = [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([ids] * num_samples, device=device)
    out = model.generate(
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    return [tokenizer.decode(row, skip_special_tokens=False) for row in out.tolist()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal generate",
        allow_abbrev=False,
        description="Generate text from a qwen_minimal checkpoint.",
    )
    parser.add_argument(
        "--checkpoint",
        help="a run's output folder (e.g. runs/cpu-tiny) or its checkpoint/ "
        "folder; without it, a random model (noise, for testing only)",
    )
    parser.add_argument(
        "--preset",
        default="cpu-tiny",
        choices=sorted(MODEL_PRESETS),
        help="model preset of the random model when no --checkpoint is given "
        "(default cpu-tiny)",
    )
    parser.add_argument(
        "--prompt",
        default="The",
        help='text to continue (default "The"; "" starts from the end-of-text token)',
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=100,
        help="tokens to generate (default 100)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="softmax temperature; 0 is greedy (default 0.8)",
    )
    parser.add_argument(
        "--top_k",
        type=int,
        default=50,
        help="keep the k most likely tokens; 0 keeps all (default 50)",
    )
    parser.add_argument(
        "--top_p",
        type=float,
        default=None,
        help="nucleus sampling threshold (default off)",
    )
    parser.add_argument(
        "--num_samples", type=int, default=1, help="independent samples (default 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="makes the samples repeatable"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cuda, mps or cpu"
    )
    return parser


def load_checkpoint(path, device):
    """The model and tokenizer of a checkpoint; for one saved without a tokenizer, the
    default tokenizer, with a warning (it may not be the one the model was trained
    with)."""
    model, tokenizer = (
        checkpoint.load_model(path, device),
        checkpoint.saved_tokenizer(path),
    )
    if tokenizer is None:
        warnings.warn(
            f"{checkpoint.find_checkpoint(path)} holds no tokenizer/ folder: using "
            "the default tokenizer, "
            f"which may differ from the one the model was trained with",
            stacklevel=2,
        )
        tokenizer = load_tokenizer()
    return model, tokenizer


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 1:
        parser.error("--num_samples and --max_new_tokens must be at least 1")
    device = resolve_device(args.device)
    if args.checkpoint:
        model, tokenizer = load_checkpoint(args.checkpoint, device)
        step = checkpoint.read_config(args.checkpoint)["step"]
        print(
            f"# {checkpoint.find_checkpoint(args.checkpoint)} (step {step})",
            file=sys.stderr,
        )
    else:
        tokenizer = load_tokenizer()
        torch.manual_seed(0 if args.seed is None else args.seed)
        model = (
            QwenLM(ModelConfig.preset(args.preset, vocab_size=len(tokenizer)))
            .to(device)
            .eval()
        )
        # the training preset of this model, where there is one (cpu-tiny-hybrid)
        train = args.preset if args.preset in TRAIN_PRESETS else "cpu-tiny"
        print(
            "# NOTE: no --checkpoint given, so this is a RANDOMLY INITIALISED "
            f"{args.preset} model: "
            "expect noise. Train one with `python -m qwen_minimal train --preset "
            f"{train}`, then pass "
            f"--checkpoint {TRAIN_PRESETS[train]['out_dir']}",
            file=sys.stderr,
        )
    texts = generate_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k or None,
        args.top_p,
        args.num_samples,
        args.seed,
    )
    for i, text in enumerate(texts):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
