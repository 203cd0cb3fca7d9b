"""qwen_minimal.to_transformers / save_pretrained / python -m qwen_minimal export: the
course's model, exported, is the same model in transformers (logits, greedy tokens) and
back in qwen_minimal (identical logits); the folder is what transformers' own
save_pretrained writes (names, config); bf16 and sharded exports load; settings that
transformers' Qwen3 cannot represent are refused. Runs offline."""

import json
import os
import subprocess
import sys

import pytest
import torch
from reference import randomize
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from qwen_minimal import (
    ModelConfig,
    QwenLM,
    load_pretrained,
    save_pretrained,
    to_transformers,
)
from qwen_minimal.cli.export import main
from qwen_minimal.data import load_tokenizer
from qwen_minimal.errors import InputError
from qwen_minimal.interop import EXPORT_MARKER
from qwen_minimal.training import checkpoint

SHAPES = {  # head_dim differs from hidden / heads in all of them
    "MoE, 5 experts top-2, untied": dict(num_experts=5, num_experts_per_tok=2),
    "MoE, 7 experts top-1, 6 heads": dict(
        num_experts=7, num_experts_per_tok=1, num_heads=6, num_kv_heads=3, head_dim=16
    ),
    "MoE, 3 experts top-2, tied, 3 layers, attention bias, top-k not renormed": dict(
        num_experts=3,
        num_experts_per_tok=2,
        tie_embeddings=True,
        num_layers=3,
        attention_bias=True,
        norm_topk_prob=False,
    ),
    "dense, tied": dict(use_moe=False, tie_embeddings=True),
    "dense, untied, MQA": dict(use_moe=False, num_kv_heads=1, head_dim=40),
}
VOCAB = 97


def random_model(seed=0, **overrides) -> QwenLM:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=24,
        max_seq_len=128,
        intermediate_size=96,
        expert_intermediate_size=48,
        tie_embeddings=False,
    )
    return randomize(QwenLM(ModelConfig(**{**values, **overrides})), seed)


def tokens(batch=2, length=19, seed=1):
    return torch.randint(
        0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def load_in_transformers(folder, **kwargs):
    """AutoModelForCausalLM.from_pretrained, asserting that every tensor of the folder
    found its parameter."""
    hf, info = AutoModelForCausalLM.from_pretrained(
        folder, output_loading_info=True, **kwargs
    )
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    return hf.eval()


def tensor_names(folder) -> dict[str, str]:
    """tensor name -> dtype, over every safetensors file of the folder."""
    names = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            names.update(
                {name: str(f.get_slice(name).get_dtype()) for name in f.keys()}
            )
    return names


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_export_loads_in_transformers_and_back(shape, tmp_path):
    ours = random_model(**shape).eval()
    save_pretrained(ours, tmp_path)
    hf = load_in_transformers(tmp_path)
    assert type(hf).__name__ == (
        "Qwen3MoeForCausalLM" if ours.config.use_moe else "Qwen3ForCausalLM"
    )
    assert hf.dtype == torch.float32
    x = tokens()
    with torch.no_grad():
        expected = ours(x).logits
        torch.testing.assert_close(hf(x).logits, expected, atol=1e-5, rtol=0)
        # in memory
        torch.testing.assert_close(
            to_transformers(ours)(x).logits, expected, atol=1e-5, rtol=0
        )
        assert torch.equal(
            load_pretrained(tmp_path, dtype=torch.float32).eval()(x).logits, expected
        )
    prompt = tokens(length=6)
    theirs = hf.generate(
        prompt,
        max_new_tokens=20,
        do_sample=False,
        attention_mask=torch.ones_like(prompt),
        pad_token_id=0,
    )
    assert torch.equal(ours.generate(prompt, 20, temperature=0), theirs)


def test_folder_is_what_transformers_writes_with_hub_expert_names(tmp_path):
    ours = random_model(num_experts=3, tie_embeddings=True)
    save_pretrained(ours, tmp_path / "ours")
    to_transformers(ours).save_pretrained(tmp_path / "transformers")
    names = tensor_names(tmp_path / "ours")
    assert names == tensor_names(tmp_path / "transformers")
    # one tensor per expert, as on the hub
    assert "model.layers.1.mlp.experts.2.gate_proj.weight" in names
    # tied
    assert (
        not any("gate_up_proj" in name for name in names)
        and "lm_head.weight" not in names
    )
    config, reference = (
        json.loads((tmp_path / name / "config.json").read_text())
        for name in ("ours", "transformers")
    )
    assert config == {
        **reference,
        "rope_theta": 1_000_000.0,
        "num_experts": 3,
        "torch_dtype": "float32",
        EXPORT_MARKER: "qwen_minimal",
    }
    assert config["model_type"] == "qwen3_moe" and config["architectures"] == [
        "Qwen3MoeForCausalLM"
    ]


def test_bf16_export_loads_as_bf16(tmp_path):
    ours = random_model(num_experts=5)
    save_pretrained(ours, tmp_path, dtype=torch.bfloat16)
    assert set(tensor_names(tmp_path).values()) == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    hf = load_in_transformers(tmp_path)  # dtype "auto": the checkpoint's
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    expected = to_transformers(ours).to(torch.bfloat16).state_dict()
    assert all(
        torch.equal(tensor, expected[name]) for name, tensor in hf.state_dict().items()
    )
    back = load_pretrained(tmp_path, dtype=torch.bfloat16).state_dict()
    assert all(
        torch.equal(tensor, ours.state_dict()[name].to(torch.bfloat16))
        for name, tensor in back.items()
    )


def test_sharded_export_loads_and_a_later_export_replaces_it(tmp_path):
    ours = random_model(num_experts=5).eval()
    # bytes: every shard holds a few tensors
    save_pretrained(ours, tmp_path, max_shard_size=20_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 3
    # readable by others: a folder to share
    assert all(shard.stat().st_mode & 0o004 for shard in shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    assert set(index["weight_map"]) == set(tensor_names(tmp_path))
    assert index["metadata"]["total_size"] == sum(
        p.numel() * 4 for p in ours.parameters()
    )
    x = tokens()
    with torch.no_grad():
        expected = ours(x).logits
        torch.testing.assert_close(
            load_in_transformers(tmp_path)(x).logits, expected, atol=1e-5, rtol=0
        )
        assert torch.equal(
            load_pretrained(tmp_path, dtype=torch.float32).eval()(x).logits, expected
        )
    # unsharded now: the old shards and index must go, not be read with it
    save_pretrained(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    with torch.no_grad():
        assert torch.equal(
            load_pretrained(tmp_path, dtype=torch.float32).eval()(x).logits, expected
        )


@pytest.mark.parametrize(
    "setting",
    [dict(capacity_factor=1.25), dict(load_balancing="bias")],
    ids=["capacity_factor", "load_balancing"],
)
def test_settings_transformers_cannot_represent_are_refused(setting, tmp_path):
    ours = random_model(**setting)
    ((name, value),) = setting.items()
    with pytest.raises(InputError, match=f"{name}={value!r}"):
        to_transformers(ours)
    with pytest.raises(InputError, match=f"{name}={value!r}"):
        save_pretrained(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_tokenizer_and_generation_config_travel_with_the_weights(
    tmp_path, tokenizer_folder
):
    tokenizer = load_tokenizer(tokenizer_folder)
    ours = random_model(vocab_size=len(tokenizer))
    save_pretrained(ours, tmp_path, tokenizer=tokenizer)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    text = "The tower is 324 metres tall."
    assert (
        theirs.encode(text) == tokenizer.encode(text)
        and theirs.eos_token_id == tokenizer.eos_token_id
    )
    assert (
        GenerationConfig.from_pretrained(tmp_path).eos_token_id
        == tokenizer.eos_token_id
    )
    assert (
        json.loads((tmp_path / "config.json").read_text())["eos_token_id"]
        == tokenizer.eos_token_id
    )
    with pytest.raises(InputError, match=f"tokenizer has {len(tokenizer)} tokens"):
        save_pretrained(random_model(), tmp_path / "wrong", tokenizer=tokenizer)


@pytest.mark.usefixtures("offline_data")
def test_cli_exports_a_training_checkpoint(tmp_path):
    from qwen_minimal.training import TrainConfig, train

    model = dict(
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        num_experts=3,
        num_experts_per_tok=2,
        expert_intermediate_size=32,
        max_seq_len=32,
    )
    train(
        TrainConfig.preset(
            "cpu-tiny",
            model=model,
            batch_size=2,
            block_size=16,
            max_steps=2,
            eval_interval=2,
            eval_batches=1,
            progress=False,
            out_dir=str(tmp_path / "run"),
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_minimal",
            "export",
            "--checkpoint",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "exported"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert run.returncode == 0, run.stderr
    assert "model.safetensors" in run.stdout and "tokenizer.json" in run.stdout
    ours = checkpoint.load_model(tmp_path / "run")
    hf = load_in_transformers(tmp_path / "exported")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    ids = torch.tensor([tokenizer.encode("The history of the")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--checkpoint", "no-such-run"], "no checkpoint at"),
        (["--checkpoint", ".", "--max_shard_size", "5XB"], "is not a size"),
    ],
)
def test_cli_bad_input_fails_in_one_line(bad, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*bad, "--out", "out"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def run(tmp_path):
    """A training run's folder: its checkpoint (a random model) and metrics log."""
    out = tmp_path / "run"
    checkpoint.save_checkpoint(out, random_model())
    (out / "metrics.jsonl").write_text("")
    return out


def export(run, out, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `export --checkpoint run --out out`, in-process."""
    try:
        main(["--checkpoint", str(run), "--out", str(out)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("inside", [".", "checkpoint", "checkpoint/sub"])
def test_an_export_into_the_run_is_refused_and_the_run_kept(run, inside, capsys):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err = export(run, run / inside, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"the training run {run.resolve()}, which the export would overwrite" in err
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert export(run, run / "hf", capsys)[0] == 0  # beside the checkpoint is fine


def test_a_folder_of_other_files_is_refused_and_an_earlier_export_replaced(
    run, tmp_path, capsys
):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    code, err = export(run, notes, capsys)
    assert code == 2 and "choose an empty folder or an earlier export" in err
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    assert export(run, tmp_path / "hf", capsys)[0] == 0
    assert export(run, tmp_path / "hf", capsys)[0] == 0  # again, over the first
    # one made before exports were marked: known from its files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config[EXPORT_MARKER]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert export(run, tmp_path / "hf", capsys)[0] == 0
    assert EXPORT_MARKER in json.loads((tmp_path / "hf" / "config.json").read_text())


def test_an_unwritable_destination_is_one_line(run, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, err = export(run, tmp_path / "file", capsys)
    line = err.strip().splitlines()[-1]  # after the warning that it has no tokenizer
    assert code == 2 and line.startswith(f"error: cannot write {tmp_path / 'file'}: ")
    assert line.endswith(": choose another --out")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda text: text[: len(text) // 2], "line "),  # cut short: not JSON
        (lambda text: json.dumps({**json.loads(text), "hidden_size": "64"}), "64'"),
        (
            lambda text: json.dumps(
                {k: v for k, v in json.loads(text).items() if k != "num_hidden_layers"}
            ),
            "num_layers=None should be int",
        ),
    ],
    ids=["bad JSON", "a string for a number", "a missing setting"],
)
def test_load_pretrained_names_a_bad_config_json(change, message, tmp_path):
    save_pretrained(random_model(), tmp_path)
    config = tmp_path / "config.json"
    config.write_text(change(config.read_text()))
    with pytest.raises(InputError, match=f"{config} is not a usable Qwen3 config") as e:
        load_pretrained(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
