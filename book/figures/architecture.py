"""Draw book/figures/architecture.svg, the model diagram on the landing page (book/intro.md).

Run `python book/figures/architecture.py` after changing it; the SVG is committed. A vector drawing stays sharp
at any size and on any screen; its text is drawn as outlines, so it looks the same whatever fonts the reader has.
"""
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

COLORS = {"norm": "#f6d7a7", "attn": "#b5d3f0", "moe": "#c9e4c5", "io": "#e4e4e4", "expert": "#8fc78a",
          "idle": "#eeeeee", "router": "#f3b6b6"}


def box(ax, x, y, w, h, text, color, fontsize=12, weight="normal"):
    """A rounded box centred on (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=color, edgecolor="#333333", linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def arrow(ax, start, end, **kwargs):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333",
                                 linewidth=1.2, shrinkA=0, shrinkB=0, **kwargs))


def plus(ax, x, y):
    ax.plot(x, y, marker="o", markersize=16, markerfacecolor="white", markeredgecolor="#333333", zorder=3)
    ax.text(x, y, "+", ha="center", va="center", fontsize=12, zorder=4)


def decoder_stack(ax):
    """Left panel: token ids -> embedding -> N decoder blocks -> final norm -> LM head -> probabilities."""
    x, w = 2.5, 3.5
    box(ax, x, 0.5, w, 0.55, "token ids  (ch. 1)", COLORS["io"])
    box(ax, x, 1.5, w, 0.55, "token embedding", COLORS["io"])
    # the repeated decoder block
    ax.add_patch(Rectangle((0.35, 2.2), 4.3, 5.55, facecolor="none", edgecolor="#777777",
                           linestyle="--", linewidth=1.2))
    ax.text(4.5, 7.5, "× N layers", ha="right", va="center", fontsize=12, style="italic")
    box(ax, x, 2.8, w, 0.5, "RMSNorm  (ch. 2)", COLORS["norm"])
    box(ax, x, 3.8, w, 0.75, "attention: GQA, QK-norm,\nRoPE, KV cache  (ch. 3-5)", COLORS["attn"])
    plus(ax, x, 4.65)
    box(ax, x, 5.45, w, 0.5, "RMSNorm  (ch. 2)", COLORS["norm"])
    box(ax, x, 6.45, w, 0.75, "Mixture of Experts\n(ch. 6)", COLORS["moe"], weight="bold")
    plus(ax, x, 7.3)
    box(ax, x, 8.3, w, 0.5, "final RMSNorm", COLORS["norm"])
    box(ax, x, 9.2, w, 0.5, "LM head  (ch. 7)", COLORS["io"])
    box(ax, x, 10.1, w, 0.55, "next-token probs (ch. 8-9)", COLORS["io"])
    for y0, y1 in [(0.78, 1.22), (1.78, 2.55), (3.05, 3.42), (4.18, 4.49), (4.81, 5.2), (5.7, 6.07),
                   (6.83, 7.14), (7.46, 8.05), (8.55, 8.95), (9.45, 9.82)]:
        arrow(ax, (x, y0), (x, y1))
    # residual connections around attention and MoE
    for y_from, y_to in [(2.3, 4.65), (4.9, 7.3)]:
        ax.plot([x, 0.6, 0.6], [y_from, y_from, y_to], color="#333333", linewidth=1.2)
        arrow(ax, (0.6, y_to), (x - 0.16, y_to))
    ax.text(0.47, 3.1, "residual", rotation=90, ha="center", va="center", fontsize=9, color="#555555")
    ax.set_title("The decoder: N identical blocks", fontsize=14)


def moe_detail(ax):
    """Right panel: the router scores E experts per token, the top-k run, their outputs are mixed."""
    num_experts, chosen = 8, {2: 0.62, 5: 0.38}  # illustrative router weights
    box(ax, 5, 0.6, 6.2, 0.55, "hidden state of one token", COLORS["io"])
    box(ax, 5, 1.9, 6.2, 0.7, "router: softmax over the E experts,\nkeep the top k, renormalise",
        COLORS["router"])
    arrow(ax, (5, 0.88), (5, 1.55))
    xs = [1.0 + i * 8.0 / (num_experts - 1) for i in range(num_experts)]
    for i, xe in enumerate(xs):
        active = i in chosen
        box(ax, xe, 4.2, 0.9, 0.8, f"E{i}", COLORS["expert" if active else "idle"], fontsize=12)
        if active:
            arrow(ax, (5, 2.25), (xe, 3.8))
            ax.text((5 + xe) / 2 + (0.6 if xe > 5 else -0.6), 2.95, f"w = {chosen[i]:.2f}", ha="center",
                    fontsize=11)
            arrow(ax, (xe, 4.6), (5, 6.05))
    box(ax, 5, 6.4, 6.2, 0.65, "weighted sum of the k outputs", COLORS["moe"])
    arrow(ax, (5, 6.73), (5, 7.35))
    box(ax, 5, 7.65, 6.2, 0.55, "MoE output for this token", COLORS["io"])
    ax.text(5, 8.8, f"E = {num_experts} SwiGLU experts, k = {len(chosen)} per token (num_experts_per_tok):\n"
            "only the green ones run for this token, so the compute\nper token stays small while the "
            "parameters grow with E.\nA load-balancing loss keeps the experts evenly used (ch. 6, 8).",
            ha="center", va="center", fontsize=12)
    ax.set_title("Inside the Mixture-of-Experts layer", fontsize=14)


def main():
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 6.6), gridspec_kw={"width_ratios": [1, 1.45]})
    decoder_stack(left)
    moe_detail(right)
    left.set_xlim(0, 5), left.set_ylim(10.6, 0)
    right.set_xlim(0, 10), right.set_ylim(10.6 * 9.4 / 10.6, 0)
    for ax in (left, right):
        ax.axis("off")
    fig.tight_layout()
    out = Path(__file__).with_name("architecture.svg")
    # No creation date, fixed element ids: drawing it again without changes gives the same file.
    with plt.rc_context({"svg.hashsalt": "architecture"}):
        fig.savefig(out, metadata={"Date": None})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
