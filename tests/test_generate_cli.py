"""python -m qwen_minimal generate: prints the same text as generate_text() for a
checkpoint, says when the model is a random one, and fails fast with a clear message for
a missing checkpoint. Runs offline.
"""

import os
import subprocess
import sys

import pytest
import torch

from qwen_minimal import ModelConfig, QwenLM
from qwen_minimal.cli.generate import generate_text, load_checkpoint, main
from qwen_minimal.data import load_tokenizer
from qwen_minimal.training import checkpoint

# the fixtures' tokenizer is the default
pytestmark = pytest.mark.usefixtures("offline_data")


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = QwenLM(
        ModelConfig.preset(
            "cpu-tiny",
            hidden_size=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            head_dim=16,
            num_experts=4,
            expert_intermediate_size=32,
            vocab_size=len(tokenizer),
        )
    )
    checkpoint.save_checkpoint(tmp_path / "run", model, step=3, tokenizer=tokenizer)
    return tmp_path / "run", model.eval()


def test_cli_prints_the_samples_of_generate_text(saved_model):
    folder, model = saved_model
    args = [
        "--prompt",
        "The tower",
        "--max_new_tokens",
        "8",
        "--num_samples",
        "2",
        "--seed",
        "0",
        "--temperature",
        "1.0",
        "--top_k",
        "20",
    ]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_minimal",
            "generate",
            "--checkpoint",
            str(folder),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert run.returncode == 0, run.stderr
    expected = generate_text(
        model,
        load_tokenizer(),
        "The tower",
        max_new_tokens=8,
        temperature=1.0,
        top_k=20,
        num_samples=2,
        seed=0,
    )
    assert (
        run.stdout
        == f"--- sample 1 ---\n{expected[0]}\n--- sample 2 ---\n{expected[1]}\n"
    )
    assert all(
        text.startswith("The tower") and len(text) > len("The tower")
        for text in expected
    )
    assert expected[0] != expected[1]  # two independent samples
    assert "step 3" in run.stderr


def test_greedy_samples_are_identical(saved_model):
    folder, _ = saved_model
    model, tokenizer = load_checkpoint(folder, "cpu")
    first, second = generate_text(
        model, tokenizer, "The", max_new_tokens=5, temperature=0, num_samples=2
    )
    assert first == second


def test_random_model_is_announced(capsys):
    main(["--prompt", "Hello", "--max_new_tokens", "3", "--seed", "1"])
    captured = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in captured.err
    assert captured.out.startswith("Hello")


def test_missing_checkpoint_fails_fast_and_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "no-such-run")])
    assert exit_info.value.code == 2
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        # a prompt in Latin-1, as Python hands on a command-line argument not in UTF-8
        (["--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")], "not UTF-8"),
        (["--temperature", "nan"], "temperature=nan must be a finite number >= 0"),
        (["--top_p", "1.5"], r"top_p=1.5 must be in (0, 1]"),
    ],
)
def test_bad_generation_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--max_new_tokens", "2"])
    err = (
        capsys.readouterr().err.strip().splitlines()[-1]
    )  # after the random-model note
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err
