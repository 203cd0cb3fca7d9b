"""Keeping the experts' load even during training: the four strategies of
ModelConfig.load_balancing.

All but the last add alpha * L_aux to the language-modelling loss (alpha =
router_aux_loss_coef), where L_aux is a Switch-Transformer loss E * sum_e f_e P_e of
each layer (moe.load_balancing_loss): f_e is the fraction of tokens that chose expert e,
P_e the mean router probability of e. They differ in which tokens f and P are counted
over:

  joint         transformers' convention: one loss over the tokens of all layers
                concatenated. Expert e of layer 1 and expert e of layer 2 are unrelated
                networks, yet their loads are added, so single layers can stay
                unbalanced while the sum looks even.
  per_layer     each layer's own loss, averaged over the layers (the original
                implementation of this course's model); f and P over the tokens of one
                forward pass, that is, one micro-batch.
  global_batch  Qwen3's (Qiu et al., 2025): per layer, f counted over the whole global
                batch of an optimizer step (every micro-batch, every data-parallel
                rank), P over the tokens in hand. A micro-batch of a few sequences is
                then free to route them to the experts they need, while the load over
                the batch stays even: experts can specialise.
  bias          DeepSeek-V3's auxiliary-loss-free balancing: no loss. A per-expert bias
                is added to the router's probabilities when choosing the top k (the
                mixing weights stay the softmax's), and after every optimizer step each
                bias moves by bias_update_rate towards evening the load: up for an
                expert below the mean load, down for one above it.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .moe import Routing, load_balancing_loss


def per_layer_loss(routing: list[Routing], num_experts_per_tok: int) -> torch.Tensor:
    """The mean over layers of each layer's Switch loss, f and P counted over this
    forward pass's tokens."""
    return torch.stack(
        [load_balancing_loss(r.router_logits, num_experts_per_tok) for r in routing]
    ).mean()


def global_batch_loss(
    routing: list[Routing], tokens_per_expert: torch.Tensor
) -> torch.Tensor:
    """The mean over layers of E * sum_e f_e P_e with f_e counted over the global batch
    and P_e over this forward.

    tokens_per_expert: [L, E] assignments per expert over the global batch so far, this
    forward's included.

    Gradient accumulation: an optimizer step runs its micro-batches one after the other,
    and each micro-batch's backward pass runs before the next micro-batch's forward.
    When micro-batch m is differentiated, only the counts of micro-batches 1..m (over
    every rank) exist, so that is what its f uses: a running count, reset at each step,
    as the global-batch implementation buffers them. The last micro-batch sees the whole
    global batch's counts; with one micro-batch on one process, f is the batch's own and
    the loss equals per_layer_loss. f has no gradient in any strategy (it counts
    discrete choices), so only P is differentiated.
    """
    counts = tokens_per_expert.float()
    num_experts = counts.shape[-1]
    losses = []
    for r, layer_counts in zip(routing, counts):
        k = r.expert_indices.shape[-1]
        # per token: the k choices of every token counted
        fraction = layer_counts / (layer_counts.sum() / k)
        probs = torch.softmax(r.router_logits.float(), dim=-1)
        losses.append(num_experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def model_loss(config: ModelConfig, routing: list[Routing]) -> torch.Tensor | None:
    """The load-balancing loss the config asks for, from one forward pass alone (None
    for bias balancing). For global_batch this is per_layer_loss: the forward's own
    tokens are all it knows; the trainer, which sees the whole step, computes
    global_batch_loss instead (training_loss)."""
    k = config.num_experts_per_tok
    if config.load_balancing == "joint":
        return load_balancing_loss([r.router_logits for r in routing], k)
    if config.load_balancing in ("per_layer", "global_batch"):
        return per_layer_loss(routing, k)
    return None


def training_loss(
    config: ModelConfig, out, step_load: torch.Tensor | None
) -> torch.Tensor | None:
    """The balancing loss of one micro-batch in a training step. step_load: [L, E]
    assignments per expert in this optimizer step so far, over every micro-batch and
    rank, this one's included (used by global_batch only)."""
    if config.load_balancing == "global_batch" and step_load is not None:
        return global_batch_loss(out.routing, step_load)
    return out.aux_loss


@torch.no_grad()
def update_bias(model, tokens_per_expert: torch.Tensor) -> None:
    """After an optimizer step of a bias-balanced model: every layer's expert_bias moves
    by exactly bias_update_rate towards an even load, b_e += rate * sign(mean load -
    load_e) (unchanged where equal). tokens_per_expert: [L, E] assignments per expert
    over the step's whole batch."""
    rate = model.config.bias_update_rate
    layers = [
        block.ffn
        for block in model.blocks
        if getattr(block.ffn, "expert_bias", None) is not None
    ]
    for moe, load in zip(layers, tokens_per_expert.float()):
        moe.expert_bias += rate * torch.sign(load.mean() - load)
