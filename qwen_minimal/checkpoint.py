"""Checkpoints: one folder with the weights (safetensors), the configurations (JSON), the tokenizer the
model was trained with and, for resuming, the training state (optimizer, step, random-number states).

Layout, inside a run's output folder:

    <out_dir>/checkpoint/model.safetensors   fp32 weights (a tied embedding is stored once)
    <out_dir>/checkpoint/config.json         {"model": ModelConfig, "train": TrainConfig, "step", "tokenizer"}
    <out_dir>/checkpoint/tokenizer/          the tokenizer, as tokenizer.save_pretrained() writes it
    <out_dir>/checkpoint/train_state.pt      optimizer state, step, RNG states (absent in weights-only saves)

A save writes a complete new folder beside the old one and then swaps the two by renaming, so an
interrupted save never leaves a checkpoint that is half old and half new.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import safetensors.torch
import torch

from . import data
from .config import ModelConfig
from .model import QwenLM

CHECKPOINT_DIR = "checkpoint"
WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE = "model.safetensors", "config.json", "tokenizer", "train_state.pt"


def save_checkpoint(out_dir: str | Path, model: QwenLM, step: int = 0, train_config: dict | None = None,
                    tokenizer=None, optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write <out_dir>/checkpoint atomically and return its path. With an optimizer, the training state
    (optimizer moments, step, RNG states) is saved too, so that training can resume exactly."""
    out_dir = Path(out_dir)
    final, tmp, old = (out_dir / (CHECKPOINT_DIR + suffix) for suffix in ("", ".tmp", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    safetensors.torch.save_model(model, str(tmp / WEIGHTS))  # drops the duplicate of a tied weight
    config = {"model": model.config.to_dict(), "train": train_config, "step": step,
              "tokenizer": None if tokenizer is None else tokenizer.name_or_path}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / TOKENIZER)
    if optimizer is not None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        # The data order is a function of (seed, step), so `step` is also the position in the data.
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng}, tmp / TRAIN_STATE)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for `path`: a checkpoint folder itself, or a run's output folder holding one."""
    path = Path(path).expanduser()
    # ".old" is there only if a save died between its two renames: it is then the newest complete one.
    for folder in (path, path / CHECKPOINT_DIR, path / (CHECKPOINT_DIR + ".old")):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected {path / CHECKPOINT_DIR / WEIGHTS} and {CONFIG} beside it, as "
        f"written by `python -m qwen_minimal.train --out_dir {path}`. Check the path, or train a model first")


def read_config(path: str | Path) -> dict:
    """The checkpoint's config.json: {"model": ..., "train": ..., "step": ..., "tokenizer": ...}."""
    return json.loads((find_checkpoint(path) / CONFIG).read_text())


def load_weights(model: QwenLM, path: str | Path) -> None:
    """Copy the checkpoint's weights into `model` (which must have the same configuration)."""
    file = find_checkpoint(path) / WEIGHTS
    device = next(model.parameters()).device
    safetensors.torch.load_model(model, str(file), strict=True, device=str(device))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> QwenLM:
    """The model saved in a checkpoint (folder or run output folder), in eval mode, fp32 weights."""
    config = ModelConfig.from_dict(read_config(path)["model"])
    model = QwenLM(config).to(device)
    load_weights(model, path)
    return model.eval()


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a checkpoint; for a checkpoint saved without one, load_tokenizer()'s
    default (announced with a warning, since it may not be the one the model was trained with)."""
    folder = find_checkpoint(path) / TOKENIZER
    if folder.is_dir():
        return data.load_tokenizer(folder)
    warnings.warn(f"{find_checkpoint(path)} holds no tokenizer/ folder: using the default tokenizer, which "
                  f"may differ from the one the model was trained with", stacklevel=2)
    return data.load_tokenizer()


def load_train_state(path: str | Path, model: QwenLM, optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, optimizer state and RNG states from a checkpoint; return the step to continue from."""
    folder = find_checkpoint(path)
    if not (folder / TRAIN_STATE).is_file():
        raise FileNotFoundError(f"{folder} holds weights only ({TRAIN_STATE} is missing), so training "
                                f"cannot resume from it: start a new run in another --out_dir")
    load_weights(model, folder)
    state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]
