"""The figures of a training run, drawn from its metrics records (monitoring.py):
losses, learning rate, gradient norms, activations, expert load. save_plots writes them
all as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

# with no display, matplotlib falls back to the Agg backend
import matplotlib.pyplot as plt
import torch

from ..files import write_atomic
from .monitoring import of_kind

# Two panels one above the other, 7 inches wide: a book's text column or a laptop screen
# shows them unscaled.
PANELS_FIGSIZE = (7, 6.4)


def _layer_colors(n: int):
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def plot_losses(records: list[dict]):
    """Training and validation loss (top) and the load-balancing loss (below it) against
    the step."""
    train, evals = of_kind(records, "train"), of_kind(records, "eval")
    fig, (ax, ax_aux) = plt.subplots(2, 1, figsize=PANELS_FIGSIZE)
    ax.plot(
        [r["step"] for r in train],
        [r["lm_loss"] for r in train],
        label="training (cross-entropy)",
    )
    ax.plot(
        [r["step"] for r in evals],
        [r["val_loss"] for r in evals],
        "o-",
        label="validation",
    )
    ax.set(
        title="Language-modelling loss",
        xlabel="optimizer step",
        ylabel="loss (nats per token)",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    aux = [r for r in train if r.get("aux_loss") is not None]
    ax_aux.plot([r["step"] for r in aux], [r["aux_loss"] for r in aux], color="C2")
    ax_aux.set(
        title="Load-balancing loss (minimum = top_k)",
        xlabel="optimizer step",
        ylabel="auxiliary loss (dimensionless)",
    )
    ax_aux.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_lr(records: list[dict]):
    train = of_kind(records, "train")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set(title="Learning rate", xlabel="optimizer step", ylabel="learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _per_layer_panels(
    records: list[dict],
    panels: list[tuple[str, str, str]],
    legend: str,
    **axes_settings,
):
    """One panel per (record key, title, y label), one line per layer, from the monitor
    records."""
    mon = of_kind(records, "monitor")
    steps = [r["step"] for r in mon]
    num_layers = len(mon[0][panels[0][0]]) if mon else 0
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=PANELS_FIGSIZE,
        sharey=axes_settings.pop("sharey", False),
    )
    for ax, (key, title, ylabel) in zip(axes, panels):
        for layer, color in enumerate(_layer_colors(num_layers)):
            ax.plot(
                steps,
                [r[key][layer] for r in mon],
                color=color,
                label=f"{legend} {layer}",
            )
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel, **axes_settings)
        ax.grid(alpha=0.3)
    if num_layers:
        axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_grad_norms(records: list[dict]):
    """Per-layer gradient norms of the attention and the feed-forward halves of each
    block."""
    return _per_layer_panels(
        records,
        [
            ("grad_norm_attn", "Gradient norm, attention", "L2 norm (before clipping)"),
            (
                "grad_norm_ffn",
                "Gradient norm, feed-forward (MoE)",
                "L2 norm (before clipping)",
            ),
        ],
        legend="layer",
        yscale="log",
        sharey=True,
    )


def plot_activations(records: list[dict]):
    """Mean and standard deviation of every block's output (the residual stream)."""
    return _per_layer_panels(
        records,
        [
            ("act_mean", "Block output mean", "mean (activation units)"),
            (
                "act_std",
                "Block output standard deviation",
                "standard deviation (activation units)",
            ),
        ],
        legend="block",
    )


def plot_expert_load(records: list[dict]):
    """Heatmap of each layer's share of routing assignments per expert, in the last
    monitoring window. An even load is 1/E in every cell."""
    mon = [r for r in of_kind(records, "monitor") if r.get("tokens_per_expert")]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    if not mon:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no expert load recorded (dense model)", ha="center")
        return fig
    counts = torch.tensor(mon[-1]["tokens_per_expert"], dtype=torch.float64)
    share = (counts / counts.sum(-1, keepdim=True)).numpy()
    num_layers, num_experts = share.shape
    image = ax.imshow(share, cmap="magma", vmin=0, aspect="auto")
    for layer in range(num_layers):
        for e in range(num_experts):
            ax.text(
                e,
                layer,
                f"{share[layer, e]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if share[layer, e] < share.max() / 2 else "black",
            )
    ax.set(
        title=f"Expert load at step {mon[-1]['step']} (even = {1 / num_experts:.3f})",
        xlabel="expert",
        ylabel="layer",
        xticks=range(num_experts),
        yticks=range(num_layers),
    )
    fig.colorbar(image, ax=ax, label="share of assignments")
    fig.tight_layout()
    return fig


def plot_expert_kl(records: list[dict]):
    """Expert load against the step: each layer's KL divergence from uniform, with the
    KL of the load averaged over layers (the original run's measure) beside it, and each
    layer's maximal violation MaxVio."""
    mon = [r for r in of_kind(records, "monitor") if r.get("kl_uniform")]
    fig, (ax_kl, ax_vio) = plt.subplots(2, 1, figsize=PANELS_FIGSIZE)
    steps = [r["step"] for r in mon]
    num_layers = len(mon[0]["kl_uniform"]) if mon else 0
    for layer, color in enumerate(_layer_colors(num_layers)):
        # KL can be exactly 0; the log axis needs positive values.
        ax_kl.plot(
            steps,
            [max(r["kl_uniform"][layer], 1e-6) for r in mon],
            color=color,
            label=f"layer {layer}",
        )
        ax_vio.plot(
            steps,
            [r["max_violation"][layer] for r in mon if "max_violation" in r],
            color=color,
            label=f"layer {layer}",
        )
    if mon and "kl_mean_load" in mon[0]:
        ax_kl.plot(
            steps,
            [max(r["kl_mean_load"], 1e-6) for r in mon],
            "k--",
            label="load averaged over layers",
        )
    ax_kl.set(
        title="Expert load: KL divergence to uniform",
        xlabel="optimizer step",
        ylabel="KL (nats)",
        yscale="log",
    )
    ax_vio.set(
        title="Expert load: MaxVio = max load / mean load - 1",
        xlabel="optimizer step",
        ylabel="MaxVio (0 = even)",
    )
    for ax in (ax_kl, ax_vio):
        ax.grid(alpha=0.3)
        if num_layers:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


PLOTS = {
    "losses": plot_losses,
    "lr": plot_lr,
    "grad_norms": plot_grad_norms,
    "activations": plot_activations,
    "expert_load": plot_expert_load,
    "expert_kl": plot_expert_kl,
}


def save_plots(records: list[dict], folder: str | Path) -> list[Path]:
    """Write every plot of PLOTS as <folder>/<name>.png and return the paths (an OSError
    if one cannot be written)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in PLOTS.items():
        fig = plot(records)
        paths.append(folder / f"{name}.png")
        try:  # (a full disk must not leave half a picture)
            write_atomic(paths[-1], lambda f: fig.savefig(f, dpi=150, format="png"))
        finally:
            plt.close(fig)
    return paths
