"""Checkpoints: one folder with the weights (safetensors), the configurations (JSON),
the tokenizer the model was trained with and, for resuming, the training state
(optimizer moments and step).

Layout, inside a run's output folder:

    <out_dir>/checkpoint/
        model.safetensors   fp32 weights (a tied embedding is stored once)
        config.json         {"model": ModelConfig, "train": TrainConfig, "step",
                             "tokenizer", "sha256": {file name: SHA-256}}
        tokenizer/          the tokenizer, as tokenizer.save_pretrained() writes it
        train_state.pt      optimizer state and step (absent in weights-only saves)

A save writes a complete new folder beside the old one and then swaps the two by
renaming, so an interrupted save never leaves a checkpoint that is half old and half
new. A file that is damaged all the same (a full disk, a copy cut short, bytes changed
in place, which the SHA-256 of the weights and of the training state in config.json
catch) is reported as an InputError that names it and says what to do. Checkpoints
saved before the checksums were recorded load unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ..errors import InputError, MissingInputError, check_field_types
from ..files import cannot_write, file_sha256
from ..model.config import ModelConfig
from ..model.decoder import QwenLM

CHECKPOINT_DIR = "checkpoint"
WEIGHTS, CONFIG, TOKENIZER, TRAIN_STATE = (
    "model.safetensors",
    "config.json",
    "tokenizer",
    "train_state.pt",
)
# a save writes CHECKPOINT_DIR + TMP, then swaps it in, keeping the last one as + OLD
TMP, OLD = ".tmp", ".old"


def save_checkpoint(
    out_dir: str | Path,
    model: QwenLM,
    step: int = 0,
    train_config: dict | None = None,
    tokenizer=None,
    optimizer: torch.optim.Optimizer | dict | None = None,
) -> Path:
    """Write <out_dir>/checkpoint atomically and return its path. With an optimizer (or
    its state_dict(), as distributed.gathered_state assembles it from several
    processes), the training state (optimizer moments and step) is saved too, so that
    training can resume exactly."""
    out_dir = Path(out_dir)
    final, tmp, old = (out_dir / (CHECKPOINT_DIR + suffix) for suffix in ("", TMP, OLD))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_checkpoint(tmp, model, step, train_config, tokenizer, optimizer)
    except OSError as e:  # a full disk, a folder not writable: the last one is kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise cannot_write(tmp, e) from None
    # readable by others, like the rest of the run (safetensors writes 0600)
    for file in (
        tmp,
        *tmp.rglob("*"),
    ):
        os.chmod(file, 0o755 if file.is_dir() else 0o644)
    if final.exists():
        # an old one left by a save that died after its swap: final is the newer
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(
    tmp: Path, model: QwenLM, step: int, train_config, tokenizer, optimizer
) -> None:
    """The files of a checkpoint, into the folder `tmp` (see save_checkpoint)."""
    _save_model(model, tmp / WEIGHTS)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / TOKENIZER)
    if optimizer is not None:
        # The data order is a function of (seed, step), so `step` is also the position
        # in the data; nothing else draws random numbers after initialisation, so no
        # random-number state is needed.
        state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        _torch_save({"step": step, "optimizer": state}, tmp / TRAIN_STATE)
    config = {
        "model": model.config.to_dict(),
        "train": train_config,
        "step": step,
        "tokenizer": None if tokenizer is None else tokenizer.name_or_path,
        # a file damaged in place keeps its size and often its structure
        "sha256": {
            name: file_sha256(tmp / name)
            for name in (WEIGHTS, TRAIN_STATE)
            if (tmp / name).exists()
        },
    }
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))


class _KeepsWriteError:
    """A file for a library that reports a failed write as an error of its own
    (torch.save: "unexpected pos 704 vs 598"): `error` keeps the OSError behind it."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _torch_save(obj, path: Path) -> None:
    """torch.save, with an OSError (not torch's RuntimeError) when the file cannot be
    written."""
    with open(path, "wb") as f:
        writer = _KeepsWriteError(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


def _save_model(model: QwenLM, path: Path) -> None:
    """safetensors' save_model (which drops the duplicate of a tied weight), with an
    OSError when the file cannot be written: safetensors reports the system's error in
    its message, as Rust writes it ("... (os error 28)")."""
    try:
        safetensors.torch.save_model(model, str(path))
    except safetensors.SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for `path`: a checkpoint folder itself, or a run's output
    folder holding one."""
    path = Path(path).expanduser()
    # ".old" is there only if a save died between its two renames: it is then the newest
    # complete one.
    for folder in (path, path / CHECKPOINT_DIR, path / (CHECKPOINT_DIR + OLD)):
        if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
            return folder
    raise MissingInputError(
        f"no checkpoint at {path}: expected {path / CHECKPOINT_DIR / WEIGHTS} and "
        f"{CONFIG} beside it, as "
        f"written by `python -m qwen_minimal train --out_dir {path}`. Check the "
        "path, or train a model first"
    )


def _damaged(file: Path, problem: str, remedy: str | None = None) -> InputError:
    remedy = (
        remedy
        or f"put back a good copy of {file.name}, or train again with another --out_dir"
    )
    return InputError(
        f"{file} is damaged ({problem}); perhaps it was cut short (a full disk, an "
        "unfinished copy) "
        f"or overwritten. To go on, {remedy}"
    )


def _first_sentence(error: Exception) -> str:
    """The gist of a library's error, on one line (torch's messages go on for a
    paragraph)."""
    return str(error).split(". ")[0].split("\n")[0] or type(error).__name__


def read_config(path: str | Path) -> dict:
    """The checkpoint's config.json: {"model": ..., "train": ..., "step": ...,
    "tokenizer": ...}, its model settings checked (ModelConfig.from_dict reads them)."""
    file = find_checkpoint(path) / CONFIG
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(file, f"not valid JSON: {e}") from None
    if not (
        isinstance(config, dict)
        and isinstance(config.get("model"), dict)
        and isinstance(config.get("step"), int)
        and "train" in config
        and isinstance(config["train"], (dict, type(None)))
        and isinstance(config.get("sha256", {}), dict)
    ):
        raise _damaged(
            file,
            'it needs "model" settings, a whole-number "step", "train" settings '
            'or null, and "sha256" checksums if any',
        )
    try:
        check_field_types(ModelConfig, config["model"])
        ModelConfig.from_dict(config["model"])
    except (InputError, TypeError) as e:
        raise _damaged(file, f"its model settings are invalid: {e}") from None
    return config


def model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig saved in a checkpoint (older checkpoints included, see
    ModelConfig.from_dict)."""
    return ModelConfig.from_dict(read_config(path)["model"])


def _checksum_differs(file: Path) -> str | None:
    """What is wrong with `file` if its SHA-256 is not the one its checkpoint's
    config.json recorded, else None (also for a checkpoint saved without checksums)."""
    expected = read_config(file.parent).get("sha256", {}).get(file.name)
    if expected is None or file_sha256(file) == expected:
        return None
    return f"its SHA-256 is not the one {CONFIG} recorded when it was saved"


def _check_weights_file(file: Path) -> None:
    """InputError unless the safetensors header of `file` reads, the file is as long as
    the header says (safe_open checks both without reading the tensors) and its bytes
    are the ones saved."""
    try:
        with safetensors.safe_open(str(file), framework="pt") as f:
            shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    except safetensors.SafetensorError as e:
        raise _damaged(file, f"not a readable safetensors file: {e}") from None
    problem = _checksum_differs(file)
    if problem:
        raise _damaged(file, problem)
    with torch.device("meta"):  # shapes only, no memory
        model = QwenLM(model_config(file.parent))
    for name, tensor in model.state_dict().items():
        if name in shapes and shapes[name] != list(tensor.shape):
            raise _misfit(
                file,
                f"{name} is {shapes[name]} there, {list(tensor.shape)} in the model",
            )


def _misfit(file: Path, detail: str) -> InputError:
    """The weights in `file` do not fit the model of config.json: config.json is to
    blame if it lacks model settings (their defaults stood in for them), else the
    weights."""
    config = file.parent / CONFIG
    lacking = sorted(
        {f.name for f in dataclasses.fields(ModelConfig)}
        - set(read_config(file.parent)["model"])
    )
    if lacking:
        return _damaged(
            config,
            f"it lacks the model settings {lacking}, whose defaults do not fit the "
            f"weights in {WEIGHTS}",
            f"put back a good copy of {CONFIG}",
        )
    return _damaged(file, f"its tensors do not fit the model of {CONFIG}: {detail}")


def load_weights(model: QwenLM, path: str | Path) -> None:
    """Copy the checkpoint's weights into `model` (which must have the same
    configuration)."""
    file = find_checkpoint(path) / WEIGHTS
    _check_weights_file(file)
    device = next(model.parameters()).device
    try:
        missing, unexpected = safetensors.torch.load_model(
            model, str(file), strict=False, device=str(device)
        )
    except RuntimeError as e:  # a tensor of another shape than config.json says
        # torch lists every mismatch on a line of its own: the first says enough
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise _misfit(file, details[0] if details else _first_sentence(e)) from None
    if missing or unexpected:
        raise _damaged(
            file,
            f"tensors missing: {sorted(missing)[:4]}, unexpected: "
            f"{sorted(unexpected)[:4]}",
        )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> QwenLM:
    """The model saved in a checkpoint (folder or run output folder), in eval mode, fp32
    weights."""
    model = QwenLM(model_config(path)).to(device)
    load_weights(model, path)
    return model.eval()


def saved_tokenizer(path: str | Path):
    """The tokenizer saved with a checkpoint, or None if it was saved without one."""
    from transformers import AutoTokenizer

    folder = find_checkpoint(path) / TOKENIZER
    if not folder.is_dir():
        return None
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise _damaged(
            folder, f"the tokenizer cannot be read: {_first_sentence(e)}"
        ) from None


def _train_state_damaged(folder: Path, problem: str) -> InputError:
    return _damaged(
        folder / TRAIN_STATE,
        problem,
        "generate from the weights, which are not affected (python -m qwen_minimal "
        "generate --checkpoint "
        f"{folder}); to train further, put back a good copy of {TRAIN_STATE} or "
        "start a new run in "
        f"another --out_dir",
    )


def _read_train_state(folder: Path, mmap: bool = False) -> dict:
    """train_state.pt, checked to be {"step": int, "optimizer": dict}; with mmap, its
    tensors are mapped, not read (a check that costs milliseconds whatever the size)."""
    file = folder / TRAIN_STATE
    if not file.is_file():
        raise MissingInputError(
            f"{folder} holds weights only ({TRAIN_STATE} is missing), so training "
            f"cannot resume from it: start a new run in another --out_dir"
        )
    # a cut-short archive has lost its table of contents, which comes last
    if not zipfile.is_zipfile(file):
        raise _train_state_damaged(folder, "not the zip archive that torch.save writes")
    problem = _checksum_differs(file)
    if problem:
        raise _train_state_damaged(folder, problem)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise _train_state_damaged(
            folder, f"torch.load cannot read it: {_first_sentence(e)}"
        ) from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("step"), int)
        and isinstance(state.get("optimizer"), dict)
    ):
        raise _train_state_damaged(
            folder, 'it does not hold a "step" and an "optimizer" state'
        )
    return state


def check_resumable(path: str | Path) -> None:
    """InputError now if training cannot resume from the checkpoint in `path` (a file
    missing or damaged), from the files' headers alone: a run checks this before it
    tokenizes its corpus, which can take minutes."""
    folder = find_checkpoint(path)
    read_config(folder)
    _check_weights_file(folder / WEIGHTS)
    _read_train_state(folder, mmap=True)


def load_optimizer_state(
    path: str | Path, optimizer: torch.optim.Optimizer, load=None
) -> int:
    """Restore the optimizer state of a checkpoint; return the step to continue from.
    load(optimizer, state) puts the saved state_dict() into the optimizer: by default
    optimizer.load_state_dict, which moves the moments to the parameters' device;
    distributed.load_optimizer_state gives each of several processes its part."""
    folder = find_checkpoint(path)
    state = _read_train_state(folder)
    try:
        if load is None:
            optimizer.load_state_dict(state["optimizer"])
        else:
            load(optimizer, state["optimizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise _train_state_damaged(
            folder, f"it does not hold this model's optimizer state: {e}"
        ) from None
    return state["step"]
