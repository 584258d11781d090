"""Checkpoints of one seed's training: everything needed to continue it exactly, and on what.

A checkpoint holds the model's and the optimizer's state, the epoch it ends, the training
history so far and the state of every random generator the seed draws from (batch order,
augmentation, dropout), so that a resumed seed on the CPU ends with exactly the metrics of
one that was never interrupted; and the data it was trained on (the job's data digest and
the digest of the seed's split, provenance.py), so that it is never continued on other data.
It is bytes here; the job folder decides where they go.

A checkpoint that cannot be restored (truncated, damaged, refused by `weights_only=True`, or
not of this replicate) raises `UnloadableCheckpoint` before anything is changed: the job sets
it aside and trains the seed from its start.
"""
import io

import torch
from torch import nn

from ratio_cnn.errors import RatioCnnError


class UnloadableCheckpoint(RatioCnnError):
    """A checkpoint that cannot continue this replicate; nothing was restored from it."""


def pack(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict],
         generators: dict[str, torch.Generator], trained_on: dict) -> bytes:
    """`trained_on`: the data and split digests (provenance.seed_binding) the epochs so far saw."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "generators": {name: g.get_state() for name, g in generators.items()},
        "trained_on": trained_on,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack(raw: bytes, where: str, model: nn.Module, optimizer: torch.optim.Optimizer,
           generators: dict[str, torch.Generator], trained_on: dict) -> tuple[int, list[dict]]:
    """Restore model, optimizer and generators in place; returns (last epoch done, history).

    Everything is checked before anything is restored: UnloadableCheckpoint when the bytes do not
    restore this replicate, RatioCnnError when they were trained on other data than `trained_on`."""
    try:
        state = torch.load(io.BytesIO(raw), map_location=next(model.parameters()).device, weights_only=True)
    except Exception as e:  # torch.load raises a dozen types for damaged bytes; every one means unloadable
        raise UnloadableCheckpoint(f"{where} cannot be read ({type(e).__name__}: {_first_line(e)})") from None
    if problem := _mismatch(state, model, generators):
        raise UnloadableCheckpoint(f"{where} {problem}")
    if state["trained_on"] != trained_on:
        other = " and ".join(what for what in ("data", "split") if state["trained_on"].get(what) != trained_on[what])
        raise RatioCnnError(f"{where} was trained on another {other or 'record'} than this job reads: resume on the "
                            "data it was started on, or start again with a new --run-id")
    try:
        optimizer.load_state_dict(state["optimizer"])  # checks its groups before it changes anything
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UnloadableCheckpoint(f"{where} holds an optimizer state of another model ({_first_line(e)})") from None
    model.load_state_dict(state["model"])
    for name, g in generators.items():
        g.set_state(state["generators"][name].cpu())
    return state["epoch"], state["history"]


def _mismatch(state, model: nn.Module, generators: dict[str, torch.Generator]) -> str | None:
    """Why `state` cannot restore this replicate, or None: every part present, of the right kind and shape."""
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "history", "generators",
                                           "trained_on"} <= set(state) or not isinstance(state["trained_on"], dict):
        return "is not a checkpoint of this version of ratio-cnn"
    epoch, history = state["epoch"], state["history"]
    if not (isinstance(epoch, int) and epoch >= 1 and isinstance(history, list) and len(history) == epoch):
        return f"records epoch {epoch!r} beside {len(history) if isinstance(history, list) else 'no'} history rows"
    expected, saved = model.state_dict(), state["model"]
    if not isinstance(saved, dict) or set(saved) != set(expected) or any(
            not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape for k, v in expected.items()):
        return "holds the weights of another model"
    saved = state["generators"]
    if not isinstance(saved, dict) or set(saved) != set(generators) or any(
            not isinstance(saved[n], torch.Tensor) or saved[n].dtype != torch.uint8
            or saved[n].numel() != g.get_state().numel() for n, g in generators.items()):
        return "holds the random generators of another replicate"
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no detail"
