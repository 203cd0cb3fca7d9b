"""The benchmark CLI at a tiny shape, and the same-weights setup it rests on (no timing
assertions)."""

import dataclasses
import json

import pytest
import torch

from qwen_minimal import InputError, config_from_transformers
from qwen_minimal.cli.bench import main, shape_config
from qwen_minimal.interop import (
    convert_state_dict,
    same_weights_pair,
    transformers_config,
)
from qwen_minimal.model.kv_cache import kv_cache_bytes

TINY = shape_config("tiny")
MOE_ONLY_FIELDS = {
    "num_experts",
    "num_experts_per_tok",
    "expert_intermediate_size",
    "norm_topk_prob",
    "router_aux_loss_coef",
}


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(tie_embeddings=True, num_experts_per_tok=1), dict(use_moe=False)],
    ids=["moe", "tied top-1", "dense"],
)
def test_hf_config_maps_back_to_the_same_model_config(overrides):
    config = dataclasses.replace(TINY, **overrides)
    # a dense transformers config has no experts; no transformers config has the rate of
    # bias balancing
    ignored = {"bias_update_rate"} | (set() if config.use_moe else MOE_ONLY_FIELDS)

    def fields(c):
        return {k: v for k, v in c.to_dict().items() if k not in ignored}

    assert fields(config_from_transformers(transformers_config(config))) == fields(
        config
    )


def test_hf_config_refuses_capacity_factor():
    with pytest.raises(InputError, match="capacity_factor"):
        transformers_config(dataclasses.replace(TINY, capacity_factor=1.0))


def test_same_weights_pair_decodes_the_same_greedy_tokens():
    ours, hf = same_weights_pair(TINY, seed=3)
    prompt = torch.randint(
        0, TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)
    )
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        do_sample=False,
    )
    assert torch.equal(ours.generate(prompt, 12, temperature=0), expected)
    assert torch.equal(
        ours.generate(prompt, 12, temperature=0, use_cache=False), expected
    )


def test_same_weights_pair_trains_with_the_same_loss_and_gradients():
    """The benchmark's training step: transformers with labels and router logits,
    qwen_minimal with shifted targets (last position ignored). Losses and every gradient
    must agree."""
    ours, hf = same_weights_pair(TINY, seed=4)
    ours.train(), hf.train()
    x = torch.randint(
        0, TINY.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1)
    )
    targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)
    ours_loss = ours(x, targets=targets).loss
    hf_loss = hf(input_ids=x, labels=x, output_router_logits=True).loss
    torch.testing.assert_close(ours_loss, hf_loss, atol=1e-5, rtol=0)
    ours_loss.backward(), hf_loss.backward()
    hf_grads = convert_state_dict(
        {name: p.grad for name, p in hf.named_parameters()}, TINY
    )
    for name, p in ours.named_parameters():
        torch.testing.assert_close(
            p.grad, hf_grads[name], atol=1e-5, rtol=1e-4, msg=name
        )


@pytest.mark.parametrize("shape", ["tiny", "tiny-hybrid"])
def test_cli_writes_json_and_plot(tmp_path, capsys, shape):
    result = main(
        [
            "--shape",
            shape,
            "--prompt_len",
            "4",
            "--prefill_len",
            "70",  # two Gated DeltaNet chunks of 64, the second one padded
            "--new_tokens",
            "6",
            "--repeats",
            "1",
            "--train_batch",
            "2",
            "--train_seq",
            "8",
            "--train_steps",
            "1",
            "--warmup",
            "1",
            "--out_dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert "qwen_minimal / transformers" in out and "cache per token" in out
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved == json.loads(json.dumps(result))
    decode, train, prefill = saved["decode"], saved["train"], saved["prefill"]
    assert prefill["prompt_len"] == 70 and prefill["first_token_match"]
    for name in ("ours", "transformers"):
        assert len(prefill[name]["tokens_per_s_runs"]) == result["repeats"]
        assert prefill[name]["tokens_per_s"] > 0
    # the cache's growth, measured on KVCache, is kv_cache_bytes' formula (fp32);
    # only a hybrid holds Gated DeltaNet states beside it
    config = shape_config(shape)
    hybrid = bool(config.linear_attention_layers)
    assert saved["cache"] == {
        "this_shape": {
            "bytes_per_token": kv_cache_bytes(config, 1, bytes_per_element=4),
            "fixed_bytes": saved["cache"]["this_shape"]["fixed_bytes"],
        },
        "all_attention": {
            "bytes_per_token": kv_cache_bytes(
                dataclasses.replace(config, layer_types=None), 1, bytes_per_element=4
            ),
            "fixed_bytes": 0,
        },
    }
    assert (saved["cache"]["this_shape"]["fixed_bytes"] > 0) == hybrid
    for name in ("ours_cache", "ours_no_cache", "transformers"):
        run = decode[name]
        assert len(run["per_token_latency_ms"]) == 5  # gaps between 6 tokens
        assert run["tokens_per_s"] > 0 and run["peak_memory_bytes"] > 0
        assert {
            "time_to_first_token_ms",
            "median_token_latency_ms",
            "latency_growth",
            "latency_growth_runs",
        } <= run.keys()
        assert len(run["latency_growth_runs"]) == result["repeats"]
    assert (
        decode["tokens_match"]
        and decode["cache_matches_no_cache"]
        and decode["matching_prefix"] == 6
    )
    assert decode["speedup_vs_transformers"] > 0 and decode["kv_cache_bytes"] > 0
    for name in ("ours", "transformers"):
        assert train[name]["step_s"] > 0 and train[name]["peak_memory_bytes"] > 0
    assert train["first_loss_diff"] < 1e-4 and train["speedup_vs_transformers"] > 0
    assert set(saved["targets"]) == {
        "decode_cache_at_least_2x_transformers",
        "cache_latency_flat",
        "no_cache_latency_grows",
        "train_step_at_least_1.2x_transformers",
    }
    assert saved["config"] == config.to_dict() and saved["memory_method"]
    png = (tmp_path / "per_token_times.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for argv, message in (
        (["--new_tokens", "1"], "new_tokens must be at least 2"),
        (["--new_tokens", "500"], "max_seq_len=128"),
        (["--threads", "0"], "threads must be at least 1, got 0"),
        # refused before the benchmark, not after minutes of it
        (
            ["--new_tokens", "8", "--prefill_len", "0"]
            + ["--out_dir", str(tmp_path / "file")],
            "a file where a folder is needed",
        ),
        (["--prefill_len", "128"], "prefill_len + 1"),
        (["--prefill_len", "-1"], "prefill_len must be at least 0"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--shape", "tiny", "--out_dir", str(tmp_path), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
