"""Turning logits into tokens: greedy, top-k, top-p, temperature."""

import pytest
import torch

from qwen_minimal import ModelConfig, QwenLM
from qwen_minimal.errors import InputError
from qwen_minimal.model.sampling import filter_logits, greedy_token, sample_next_token


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_token_is_torch_argmax_first_on_ties(dtype):
    logits = torch.randn(3, 50257, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[1, 7] = logits[1, 40000] = (
        100.0  # a tie: the first index wins, as in torch.argmax
    )
    token = greedy_token(logits)
    assert token.shape == (3, 1) and token.dtype == torch.int64
    assert torch.equal(token, logits.argmax(dim=-1, keepdim=True))
    assert token[1, 0].item() == 7


def test_temperature_zero_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    greedy = logits.argmax(dim=-1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, temperature=0), greedy)
    for temperature in (0.5, 1.0, 2.0):
        assert torch.equal(
            sample_next_token(logits, temperature, top_k=1, generator=g), greedy
        )
        assert torch.equal(
            sample_next_token(logits, temperature, top_p=1e-6, generator=g), greedy
        )


def test_filters_keep_the_top_k_and_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [
        [True, True, False, False]
    ]
    # 0.5 + 0.3 = 0.8 reaches top_p = 0.8: the third token is not needed
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [
        [True, True, True, False]
    ]


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    draws = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(0))
    again = sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    freq = torch.bincount(draws.flatten(), minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=1.0, top_k=0), "top_k"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
    ],
)
def test_bad_sampling_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next_token(torch.zeros(1, 5), **kwargs)


TINY = ModelConfig(
    vocab_size=11,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    max_seq_len=16,
    num_experts=2,
    num_experts_per_tok=1,
    expert_intermediate_size=8,
)
IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    "input_ids, kwargs, message",
    [
        (torch.tensor([[1, 11]]), {}, "token id 11, outside the model's vocabulary"),
        (torch.tensor([[-1, 2]]), {}, "token id -1, outside"),
        (torch.zeros(2, 0, dtype=torch.long), {}, "the prompt is empty"),
        (torch.tensor([1, 2]), {}, r"must be a \[batch, length\] tensor"),
        ([[1, 2]], {}, r"must be a \[batch, length\] tensor"),
        (torch.tensor([[1.0, 2.0]]), {}, "must hold integer token ids"),
        (IDS, dict(max_new_tokens=-1), "max_new_tokens=-1 must be at least 0"),
        (IDS, dict(temperature=float("nan")), "temperature=nan must be a finite"),
        (IDS, dict(temperature=float("inf")), "temperature=inf must be a finite"),
        (IDS, dict(temperature=-0.5), "temperature=-0.5 must be a finite"),
        (IDS, dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (IDS, dict(top_p=float("nan")), r"top_p=nan must be in \(0, 1\]"),
        (IDS, dict(top_k=0), "top_k=0 must be at least 1"),
    ],
)
def test_generate_refuses_bad_input_in_one_line_before_any_token(
    input_ids, kwargs, message
):
    model = QwenLM(TINY).eval()
    tokens = []
    with pytest.raises(InputError, match=message) as error:
        model.generate(
            input_ids, **{"max_new_tokens": 2, **kwargs}, on_token=tokens.append
        )
    assert "\n" not in str(error.value) and not tokens


def test_a_prompt_of_the_whole_vocabulary_and_no_new_tokens_is_fine():
    ids = torch.arange(TINY.vocab_size)[None]
    assert torch.equal(QwenLM(TINY).generate(ids, 0), ids)
