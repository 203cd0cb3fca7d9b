"""The four load-balancing strategies (qwen_minimal/model/balancing.py) against
transformers' Switch loss and against their definitions: per_layer, joint, global_batch,
bias; and the balance measures of monitoring.py."""

import pytest
import reference
import torch
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from qwen_minimal import ModelConfig, QwenLM
from qwen_minimal.model.balancing import global_batch_loss, per_layer_loss, update_bias
from qwen_minimal.model.moe import Routing, count_per_expert, route
from qwen_minimal.training import TrainConfig, checkpoint, monitoring, train

E, K = 6, 2


def routing(logits: torch.Tensor, k: int = K) -> Routing:
    weights, indices = route(logits, k)
    return Routing(logits, indices, weights, None)


# the training tests' micro model, with narrower experts
MICRO = dict(reference.MICRO_MODEL, expert_intermediate_size=16)


def config(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=101,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_seq_len=64,
        num_experts=E,
        num_experts_per_tok=K,
        expert_intermediate_size=16,
        init_std=0.1,
    )
    return ModelConfig(**{**fields, **overrides})


def skewed_layers(seed=0, tokens=40):
    """Router logits of three layers, each favouring other experts, as a trained router
    may."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(tokens, E, generator=g)
        + 3 * torch.nn.functional.one_hot(torch.tensor(layer), E)
        for layer in range(3)
    ]


def test_per_layer_is_the_mean_of_transformers_loss_of_each_layer_alone():
    layers = skewed_layers()
    expected = torch.stack(
        [load_balancing_loss_func((layer,), E, K) for layer in layers]
    ).mean()
    torch.testing.assert_close(
        per_layer_loss([routing(layer) for layer in layers], K), expected
    )
    joint = load_balancing_loss_func(tuple(layers), E, K)
    # layers that favour different experts look even when summed
    assert not torch.allclose(expected, joint)


@pytest.mark.parametrize("strategy", ["joint", "per_layer", "global_batch"])
def test_the_model_trains_on_the_loss_its_config_names(strategy):
    torch.manual_seed(0)
    model = QwenLM(config(load_balancing=strategy))
    x = torch.randint(0, 101, (2, 12))
    out = model(x, x)
    logits = tuple(r.router_logits for r in out.routing)
    expected = (
        load_balancing_loss_func(logits, E, K)
        if strategy == "joint"
        else torch.stack(
            [load_balancing_loss_func((layer,), E, K) for layer in logits]
        ).mean()
    )
    torch.testing.assert_close(out.aux_loss, expected)
    torch.testing.assert_close(
        out.loss, out.lm_loss + model.config.router_aux_loss_coef * expected
    )


def test_global_batch_uses_the_frequencies_of_the_whole_batch():
    layers = skewed_layers(tokens=24)
    micro = [
        [routing(layer[:12]) for layer in layers],
        [routing(layer[12:]) for layer in layers],
    ]
    whole = [routing(layer) for layer in layers]
    batch_load = torch.stack([count_per_expert(r.expert_indices, E) for r in whole])
    # With the whole batch's counts, the mean of the micro-batches' losses is the loss
    # over the whole batch ...
    mean_of_micro = (
        global_batch_loss(micro[0], batch_load)
        + global_batch_loss(micro[1], batch_load)
    ) / 2
    torch.testing.assert_close(mean_of_micro, per_layer_loss(whole, K))
    # ... which is not what the micro-batches' own frequencies give (per_layer on each
    # micro-batch),
    own = (per_layer_loss(micro[0], K) + per_layer_loss(micro[1], K)) / 2
    assert not torch.allclose(own, mean_of_micro)
    # and with one micro-batch global_batch is per_layer.
    torch.testing.assert_close(
        global_batch_loss(whole, batch_load), per_layer_loss(whole, K)
    )


def test_global_batch_training_counts_over_the_micro_batches_of_a_step(
    monkeypatch, offline_data, tmp_path
):
    """In a step of 2 micro-batches the second one's loss uses the counts of both (the
    step's global batch)."""
    from qwen_minimal.model import balancing

    seen = []
    real = balancing.global_batch_loss
    monkeypatch.setattr(
        balancing,
        "global_batch_loss",
        lambda r, load: seen.append(load.clone()) or real(r, load),
    )
    cfg = TrainConfig.preset(
        "cpu-tiny",
        model=dict(MICRO, load_balancing="global_batch"),
        batch_size=4,
        grad_accum_steps=2,
        block_size=16,
        max_steps=1,
        eval_interval=10,
        eval_batches=1,
        progress=False,
        out_dir=str(tmp_path / "run"),
    )
    train(cfg)
    assert len(seen) == 2
    tokens_per_micro_batch = 2 * 16
    assert (
        seen[0].sum(-1) == tokens_per_micro_batch * 2
    ).all()  # k = 2 assignments per token
    assert (
        seen[1].sum(-1) == 2 * tokens_per_micro_batch * 2
    ).all()  # both micro-batches
    assert (seen[1] >= seen[0]).all()


def test_bias_chooses_experts_but_the_softmax_weighs_them():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, E, generator=g)
    bias = torch.tensor([0.0, 0.0, 0.3, 0.0, -0.3, 0.1])
    weights, indices = route(logits, K, selection_bias=bias)
    probs = torch.softmax(logits, dim=-1)
    assert torch.equal(indices, (probs + bias).topk(K, dim=-1).indices)
    chosen = probs.gather(-1, indices)
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True))
    # the bias did change some choices
    assert not torch.equal(indices, probs.topk(K, dim=-1).indices)


def test_bias_moves_by_exactly_the_rate_towards_an_even_load():
    model = QwenLM(config(load_balancing="bias", bias_update_rate=0.01))
    load = torch.tensor([[10, 0, 5, 5, 5, 5], [1, 2, 3, 4, 5, 15], [5, 5, 5, 5, 5, 5]])
    update_bias(model, load)
    biases = torch.stack([block.ffn.expert_bias for block in model.blocks])
    expected = 0.01 * torch.sign(load.float().mean(-1, keepdim=True) - load)
    assert torch.equal(biases, expected)
    assert biases[0, 0] == -0.01 and biases[0, 1] == 0.01 and (biases[2] == 0).all()


def test_bias_balancing_evens_a_skewed_router():
    torch.manual_seed(0)
    model = QwenLM(
        config(
            load_balancing="bias", num_layers=1, num_experts=8, bias_update_rate=0.01
        )
    )
    moe = model.blocks[0].ffn
    with torch.no_grad():
        moe.router.weight[0] += (
            0.1  # with inputs of positive mean, most tokens prefer expert 0
        )
    x = torch.randn(256, 32) + 0.5

    def load():
        _, r = moe(x)
        return r.tokens_per_expert[None]  # [1 layer, E]

    history = []
    for _ in range(60):
        history.append(monitoring.max_violation(load()).item())
        update_bias(model, load())
    history.append(monitoring.max_violation(load()).item())
    assert history[0] > 1.5 and history[-1] < 0.25 * history[0], history
    assert min(history[-10:]) < 0.5  # and it stays near even


def test_bias_is_saved_with_the_model(tmp_path):
    model = QwenLM(config(load_balancing="bias"))
    update_bias(model, torch.tensor([[9, 1, 1, 1, 1, 1]] * 3))
    checkpoint.save_checkpoint(tmp_path, model)
    loaded = checkpoint.load_model(tmp_path)
    for a, b in zip(model.blocks, loaded.blocks):
        assert (
            torch.equal(a.ffn.expert_bias, b.ffn.expert_bias)
            and a.ffn.expert_bias.abs().sum() > 0
        )
    x = torch.randint(0, 101, (1, 9))
    assert torch.equal(model.eval()(x).logits, loaded(x).logits)


@pytest.mark.parametrize("strategy", ["joint", "per_layer", "global_batch", "bias"])
def test_resume_repeats_the_uninterrupted_curve(strategy, offline_data, tmp_path):
    def cfg(out):
        return TrainConfig.preset(
            "cpu-tiny",
            model=dict(MICRO, load_balancing=strategy, bias_update_rate=0.01),
            batch_size=4,
            grad_accum_steps=2,
            block_size=16,
            max_steps=4,
            eval_interval=2,
            eval_batches=1,
            log_interval=1,
            monitor_interval=2,
            progress=False,
            out_dir=str(out),
        )

    whole = train(cfg(tmp_path / "whole"))
    train(cfg(tmp_path / "split"), stop_at=2)
    resumed = train(cfg(tmp_path / "split"), resume=True)

    # timings differ
    def strip(h):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in h]

    assert strip(
        monitoring.read_metrics(tmp_path / "split" / "metrics.jsonl")
    ) == strip(whole.history)
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), name


def test_balance_measures():
    counts = torch.tensor([[5, 5, 5, 5], [20, 0, 0, 0], [2, 6, 0, 0]])
    torch.testing.assert_close(
        monitoring.max_violation(counts),
        torch.tensor([0.0, 3.0, 2.0], dtype=torch.float64),
    )
    # the layer-averaged load of two mirror-image layers is even: the weaker measure
    # misses their imbalance
    mirror = torch.tensor([[8, 0, 0, 0], [0, 8, 8, 8]])
    assert monitoring.kl_of_mean_load(
        torch.tensor([[8, 8, 0, 0], [0, 0, 8, 8]])
    ) == pytest.approx(0.0)
    assert (monitoring.kl_to_uniform(mirror) > 0.2).all()
