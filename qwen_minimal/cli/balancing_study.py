"""The load-balancing study: `python -m qwen_minimal balancing-study` (see --help).

The same small MoE trained on the same data for the same steps under each load-balancing
strategy of balancing.py, and beside them the dense model of the same active compute per
token (a SwiGLU of hidden width k x the expert width), for one or more seeds. For every
run it records the validation loss against the training FLOPs and, at the end, the
expert load of every layer: its KL divergence from uniform, the KL of the load averaged
over layers (the original implementation's measure) and MaxVio, as the trainer measured
them on the batch of the last monitored step, and the KL of every layer on the
validation text. It writes into --out_dir balance.json (every figure), balance.md (the
table) and two figures:
  val_loss_vs_flops.png   validation loss against training FLOPs, every run
  kl_per_layer.png        each layer's KL to uniform during training, one panel per
  strategy (first seed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import typing
from pathlib import Path

import torch

from ..data import load_corpus, sequential_blocks
from ..errors import InputError
from ..model.config import LOAD_BALANCING, ModelConfig
from ..training import TRAIN_PRESETS, TrainConfig, monitoring, train
from .options import add_field_options, exit_on_input_error, parse_value, reject_unknown

DENSE = "dense"
VARIANTS = (*LOAD_BALANCING, DENSE)
# The study behind the defaults (four seeds of cpu-tiny on the WikiText sample), its
# command in its "command".
COMMITTED_RESULTS = Path(__file__).parents[1] / "results" / "load_balancing.json"


def parse_variant(variant: str) -> tuple[str, dict]:
    """ "global_batch@router_aux_loss_coef=0.03" -> ("global_batch",
    {"router_aux_loss_coef": 0.03}): a strategy (or "dense") and ModelConfig fields that
    change for it alone."""
    name, _, settings = variant.partition("@")
    if name not in VARIANTS:
        raise InputError(
            f"variant {variant!r}: the part before @ must be one of "
            f"{', '.join(VARIANTS)}"
        )
    hints = typing.get_type_hints(ModelConfig)
    fields = {}
    for setting in filter(None, settings.split(",")):
        key, _, value = setting.partition("=")
        if key not in hints or not value:
            raise InputError(
                f"variant {variant!r}: {setting!r} is not FIELD=VALUE with a "
                "ModelConfig field"
            )
        try:
            fields[key] = parse_value(value, hints[key])
        except argparse.ArgumentTypeError as e:
            raise InputError(f"variant {variant!r}: {e}") from None
    return name, fields


def variant_config(
    base: TrainConfig, variant: str, seed: int, out_dir: str
) -> TrainConfig:
    """`base` under one load-balancing strategy, or as the dense model of the same
    active compute per token, with the variant's own settings (parse_variant)."""
    name, fields = parse_variant(variant)
    m = dataclasses.replace(base.model, **fields)
    if name == DENSE:
        model = dataclasses.replace(
            m,
            use_moe=False,
            intermediate_size=m.num_experts_per_tok * m.expert_intermediate_size,
        )
    else:
        model = dataclasses.replace(m, load_balancing=name)
    return dataclasses.replace(
        base, model=model, seed=seed, out_dir=out_dir, progress=False
    )


@torch.no_grad()
def validation_load(model, validation, config: TrainConfig) -> torch.Tensor | None:
    """[L, E] assignments per expert of `model` over the validation blocks the trainer
    evaluates on (None if dense)."""
    model.eval()
    device = next(model.parameters()).device
    load = None
    for x, _ in sequential_blocks(
        validation,
        config.batch_size,
        config.block_size,
        device,
        max_batches=config.eval_batches,
    ):
        counts = model(x).tokens_per_expert
        if counts is None:
            return None
        load = counts if load is None else load + counts
    return load


def run_variant(config: TrainConfig, validation, train_fn=train) -> dict:
    """Train one configuration (with train_fn, e.g. book.train_once); its validation
    curve against FLOPs, its KL during training, its end figures."""
    result = train_fn(config)
    c = result.config
    flops_per_step = (
        result.model.flops_per_token(c.block_size, training=True)
        * c.batch_size
        * c.block_size
    )
    run = {
        "val_loss": monitoring.of_kind(result.history, "eval")[-1]["val_loss"],
        "curve": [
            {
                "step": r["step"],
                "flops": r["step"] * flops_per_step,
                "val_loss": r["val_loss"],
            }
            for r in monitoring.of_kind(result.history, "eval")
        ],
        "kl_during_training": [
            {"step": r["step"], "kl_uniform": r["kl_uniform"]}
            for r in monitoring.of_kind(result.history, "monitor")
            if "kl_uniform" in r
        ],
    }
    monitored = [
        r for r in monitoring.of_kind(result.history, "monitor") if "kl_uniform" in r
    ]
    if monitored:  # the trainer's measures on the batch of the last monitored step
        last = monitored[-1]
        run.update(
            {key: last[key] for key in ("kl_uniform", "kl_mean_load", "max_violation")},
            monitored_step=last["step"],
        )
        run["validation_kl_uniform"] = monitoring.kl_to_uniform(
            validation_load(result.model, validation, c)
        ).tolist()
    return run


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per variant, over seeds: mean and spread (max - min) of the validation loss, the
    mean of each layer's KL and MaxVio and of their worst layer, and the KL of the
    layer-averaged load."""
    table = {}
    for variant, seeds in runs.items():
        losses = [r["val_loss"] for r in seeds]
        row = {
            "val_loss": statistics.mean(losses),
            "val_loss_spread": max(losses) - min(losses),
            "seeds": len(seeds),
        }
        if "kl_uniform" in seeds[0]:
            for key in ("kl_uniform", "max_violation", "validation_kl_uniform"):
                per_layer = [
                    statistics.mean(r[key][layer] for r in seeds)
                    for layer in range(len(seeds[0][key]))
                ]
                row[key] = per_layer
                row[f"worst_{key}"] = statistics.mean(max(r[key]) for r in seeds)
            row["kl_mean_load"] = statistics.mean(r["kl_mean_load"] for r in seeds)
        table[variant] = row
    return table


def markdown_table(table: dict[str, dict]) -> str:
    lines = [
        "| variant | validation loss (spread over seeds) | KL to uniform per layer | "
        "worst layer's KL | "
        "KL of the layer-averaged load | MaxVio per layer | worst layer's KL on "
        "validation text |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, row in table.items():
        if "kl_uniform" in row:
            kl = " / ".join(f"{v:.3f}" for v in row["kl_uniform"])
            vio = " / ".join(f"{v:.2f}" for v in row["max_violation"])
            cells = [
                kl,
                f"{row['worst_kl_uniform']:.3f}",
                f"{row['kl_mean_load']:.4f}",
                vio,
                f"{row['worst_validation_kl_uniform']:.3f}",
            ]
        else:
            cells = ["(dense)"] * 5
        lines.append(
            f"| {variant} | {row['val_loss']:.3f} ({row['val_loss_spread']:.3f}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot_study(runs: dict[str, list[dict]]):
    """(validation loss against training FLOPs, every run; each layer's KL during
    training per strategy)."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig_loss, ax = plt.subplots(figsize=(7, 4.2))
    for i, (variant, seeds) in enumerate(runs.items()):
        for j, run in enumerate(seeds):
            curve = [p for p in run["curve"] if p["step"] > 0]
            ax.plot(
                [p["flops"] for p in curve],
                [p["val_loss"] for p in curve],
                color=f"C{i}",
                linestyle="-" if j == 0 else ":",
                marker="o",
                markersize=3,
                label=variant if j == 0 else None,
            )
    ax.set(
        title="Validation loss against training compute",
        xlabel="training FLOPs",
        ylabel="validation loss (nats)",
        xscale="log",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig_loss.tight_layout()

    moe = [v for v in runs if runs[v][0]["kl_during_training"]]
    columns = min(2, len(moe))
    rows = -(-len(moe) // columns)
    fig_kl, axes = plt.subplots(
        rows, columns, figsize=(7, 2.9 * rows + 0.6), sharey=True, squeeze=False
    )
    cmap = matplotlib.colormaps["viridis"]
    for ax, variant in zip(axes.flat, moe):
        points = runs[variant][0]["kl_during_training"]
        num_layers = len(points[0]["kl_uniform"])
        for layer in range(num_layers):
            ax.plot(
                [p["step"] for p in points],
                [max(p["kl_uniform"][layer], 1e-4) for p in points],
                color=cmap(layer / max(1, num_layers - 1)),
                label=f"layer {layer}",
            )
        ax.set(
            title=variant,
            xlabel="optimizer step",
            ylabel="KL to uniform (nats)",
            yscale="log",
        )
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(moe) :]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=7)
    fig_kl.suptitle("Expert load of each layer during training")
    fig_kl.tight_layout()
    return fig_loss, fig_kl


def study(
    base: TrainConfig,
    variants=VARIANTS,
    seeds=(0,),
    out_dir: str | Path | None = "analytics/balance",
    train_fn=train,
    command: str | None = None,
) -> dict:
    """Train every variant of `base` for every seed (with train_fn); write the results
    into out_dir (unless None) and return them. The KL figures of the table are the
    means over seeds; "worst" is the mean of each seed's worst layer."""
    import matplotlib.pyplot as plt

    if not variants or not seeds:
        raise InputError(
            f"variants {list(variants)} and seeds {list(seeds)}: give at least one "
            "of each"
        )
    for variant in variants:
        parse_variant(variant)  # every variant checked before the first run
    validation = load_corpus(base.data, base.tokenizer).validation
    runs = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory() as scratch:  # checkpoints are not kept
        for seed in seeds:
            for variant in variants:
                config = variant_config(
                    base, variant, seed, f"{scratch}/{variant}-{seed}"
                )
                print(f"== {variant}, seed {seed}")
                runs[variant].append(run_variant(config, validation, train_fn))
    settings = {
        k: v
        for k, v in base.to_dict().items()
        if k not in ("out_dir", "progress", "seed")
    }
    results = {
        "command": command,
        "settings": settings,
        "seeds": list(seeds),
        "table": summarize(runs),
        "runs": runs,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "balance.json").write_text(json.dumps(results, indent=1))
        (out_dir / "balance.md").write_text(markdown_table(results["table"]))
        for fig, name in zip(plot_study(runs), ("val_loss_vs_flops", "kl_per_layer")):
            fig.savefig(out_dir / f"{name}.png", dpi=150)
            plt.close(fig)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal balancing-study",
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default="cpu-tiny",
        choices=sorted(TRAIN_PRESETS),
        help="training preset to vary",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"what to train: {', '.join(VARIANTS)} (default: all), each optionally "
        "with model "
        f"fields of its own, e.g. joint@router_aux_loss_coef=0.01",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1],
        help="seeds, one run each (default 0 1)",
    )
    parser.add_argument(
        "--out_dir", default="analytics/balance", help="where the results go"
    )
    add_field_options(
        parser.add_argument_group("training fields (of every run)"),
        TrainConfig,
        skip=("model", "out_dir", "progress", "seed"),
    )
    add_field_options(
        parser.add_argument_group("model fields (of every run)"),
        ModelConfig,
        prefix="model.",
        skip=("load_balancing",),
    )
    return parser


@exit_on_input_error
def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    reject_unknown(parser, unknown)
    fields = {
        k: v
        for k, v in vars(args).items()
        if k not in ("preset", "variants", "seeds", "out_dir")
    }
    model = {k[len("model.") :]: v for k, v in fields.items() if k.startswith("model.")}
    base = TrainConfig.preset(
        args.preset, model=model, **{k: v for k, v in fields.items() if "." not in k}
    )
    command = "python -m qwen_minimal balancing-study " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    results = study(
        base, tuple(args.variants), tuple(args.seeds), args.out_dir, command=command
    )
    print(markdown_table(results["table"]))
    print(
        "wrote balance.json, balance.md, val_loss_vs_flops.png and kl_per_layer.png "
        f"in {args.out_dir}"
    )
    return results
