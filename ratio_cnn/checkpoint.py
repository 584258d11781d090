"""Checkpoints of one seed's training: everything needed to continue it exactly.

A checkpoint holds the model's and the optimizer's state, the epoch it ends, the training
history so far and the state of every random generator the seed draws from (batch order,
augmentation, dropout), so that a resumed seed on the CPU ends with exactly the metrics of
one that was never interrupted. It is bytes here; the job folder decides where they go.
"""
import io

import torch
from torch import nn


def pack(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict],
         generators: dict[str, torch.Generator]) -> bytes:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack(raw: bytes, model: nn.Module, optimizer: torch.optim.Optimizer,
           generators: dict[str, torch.Generator]) -> tuple[int, list[dict]]:
    """Restore model, optimizer and generators in place; returns (last epoch done, history)."""
    device = next(model.parameters()).device
    state = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, g in generators.items():
        g.set_state(state["generators"][name].cpu())
    return state["epoch"], state["history"]
