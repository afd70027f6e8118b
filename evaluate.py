"""Evaluation: the losses that train.py and finetune.py log, and the paper's measurements.

Every loss here is the mean next-token loss over a *fixed* set of windows of a token file: the same
windows at every eval of every run, so that curves are smooth and comparable across runs (they are
the raw material of fit_laws.py). The windows are evenly spaced over the whole file, which covers
all of a small held-out split and a representative sample of a large one.
"""
import contextlib

import numpy as np
import torch
import torch.distributed as dist


def eval_offsets(n_tokens: int, seq_len: int, n_windows: int) -> np.ndarray:
    """Start offsets of up to n_windows windows of seq_len + 1 tokens, evenly spread over the file."""
    n_possible = (n_tokens - 1) // seq_len
    if n_possible < 1:
        raise ValueError(f"a split of {n_tokens} tokens is shorter than one window of {seq_len + 1}")
    if n_windows >= n_possible:  # small split: every non-overlapping window, i.e. all of it
        return np.arange(n_possible) * seq_len
    return np.linspace(0, n_tokens - seq_len - 1, n_windows).astype(np.int64)


@torch.no_grad()
def mean_loss(model, tokens, seq_len: int, n_windows: int, batch_size: int, device,
              autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> float:
    """Mean token loss of `model` over the fixed windows of `tokens` (a memmap). Under torchrun the
    windows are shared out across ranks and the sums reduced, so every rank returns the same value."""
    was_training = model.training
    model.eval()
    offsets = eval_offsets(len(tokens), seq_len, n_windows)[rank::world_size]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, number of tokens)
    for start in range(0, len(offsets), batch_size):
        rows = np.stack([tokens[o:o + seq_len + 1] for o in offsets[start:start + batch_size]]).astype(np.int64)
        rows = torch.from_numpy(rows).to(device)
        with autocast():
            _, loss = model(rows[:, :-1], rows[:, 1:])
        n = rows[:, 1:].numel()
        total += torch.stack([loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=device)])
    if world_size > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()
