"""`python -m qwen_minimal train`: the training run from a shell (see --help)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from ..model.config import ModelConfig
from ..training import distributed
from ..training.config import TRAIN_PRESETS, TrainConfig
from ..training.loop import train
from .options import add_field_options, exit_on_input_error, reject_unknown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal train",
        allow_abbrev=False,
        usage="%(prog)s [--preset NAME] [--resume] [--stop_at N]\n"
        "       [--FIELD VALUE ...] [--model.FIELD VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the qwen_minimal MoE language model.\n\n"
        "Start from a preset and override any field: a training field as --FIELD "
        "VALUE,\n"
        "a model field as --model.FIELD VALUE (also --FIELD=VALUE). Booleans take\n"
        "true/false, optional fields take none. Defaults below are the presets'\n"
        "(wikitext103 / cpu-tiny); model.vocab_size always follows the tokenizer.",
        epilog="examples:\n"
        "  python -m qwen_minimal train --preset cpu-tiny\n"
        "  python -m qwen_minimal train --preset cpu-tiny --max_steps 500 "
        "--model.hidden_size 256\n"
        "  python -m qwen_minimal train --preset wikitext103            # the full "
        "bf16 GPU run\n"
        "  python -m qwen_minimal train --out_dir runs/wikitext103 --resume  # "
        "continue a run\n"
        "  torchrun --nproc_per_node 8 -m qwen_minimal train --preset wikitext103  # "
        "8 GPUs\n"
        "Ctrl-C or SIGTERM saves a checkpoint before it stops; --resume continues\n"
        "on the same loss curve.",
    )
    parser.add_argument(
        "--preset",
        default="wikitext103",
        choices=sorted(TRAIN_PRESETS),
        help="training preset (default wikitext103)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out_dir (its saved settings, then your overrides)",
    )
    parser.add_argument(
        "--stop_at",
        type=int,
        default=None,
        help="end this session after that many steps in total (resumable); the "
        "schedule "
        "still spans max_steps",
    )
    # wikitext103, then cpu-tiny
    presets = [TrainConfig.preset(name) for name in TRAIN_PRESETS]
    add_field_options(
        parser.add_argument_group("training fields"),
        TrainConfig,
        skip=("model",),
        defaults=lambda name: " / ".join(str(getattr(c, name)) for c in presets),
    )
    add_field_options(
        parser.add_argument_group("model fields"),
        ModelConfig,
        prefix="model.",
        defaults=lambda name: " / ".join(str(getattr(c.model, name)) for c in presets),
    )
    return parser


def config_from_args(
    argv: list[str] | None = None,
) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's settings: a preset, or with --resume the run's saved settings, changed
    by the options given."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    reject_unknown(parser, unknown)
    session = {"preset", "resume", "stop_at"}
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in session and not k.startswith("model.")
    }
    model_overrides = {
        k[len("model.") :]: v for k, v in vars(args).items() if k.startswith("model.")
    }
    try:
        config = TrainConfig.preset(args.preset, model=model_overrides, **overrides)
    except InputError as e:
        parser.error(str(e))
    # outside the try: a missing or damaged checkpoint is not a usage error, main prints
    # one line
    if args.resume:
        overrides.pop("out_dir", None)
        config = TrainConfig.from_run(
            config.out_dir, model=model_overrides, **overrides
        )
    return config, args


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    config, args = config_from_args(argv)
    result = train(config, resume=args.resume, stop_at=args.stop_at)
    distributed.finish()
    if result.interrupted:
        # the shell's code for "stopped by that signal": 130 Ctrl-C, 143 SIGTERM
        sys.exit(128 + result.stop_signal)
