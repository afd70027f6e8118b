"""The memory plan of train.py (processes.py), for every preset on the hardware it is meant for, and checked against
what a training step really holds.

    python scripts/memory_plan.py              # train.py's defaults and each configs/*.json preset, on its hardware
    python scripts/memory_plan.py --measure    # plan vs measured peak at small shapes, on this CPU

train.py prints the plan of its own run at start-up and refuses one that cannot fit (processes.py's
memory_plan and check_memory). This script shows the presets side by side (README "Scaling up" is its output) and
measures the plan's accuracy: it counts, tensor by tensor, the bytes a few real training steps hold
(build the model, forward, backward, clip, AdamW) and compares the peak with the plan. The count is
exact and deterministic: a dispatch mode sees every tensor an operator creates and a weak reference
tells when its memory goes, so the peak is what a GPU's allocator would have to hold, before its
caching and fragmentation (~10% more on a GPU; the plan adds 2 GB there for the CUDA context and
NCCL's buffers). No GPU has checked the GPU terms yet (bf16 activations, fused AdamW, FSDP's buffers).
"""
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import processes  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from model import GPT, config_from_preset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_VOCAB = 50257  # the default dataset's tokenizer, and the one the GPU presets are written for
# The hardware each training preset is written for: (processes, device memory in GB); None: train.py's defaults
HARDWARE = {None: (1, None), "gpu-124m.json": (1, 80), "olmo-1b.json": (8, 80), "olmo-3b.json": (8, 80)}


class PeakBytes(TorchDispatchMode):
    """While active, the bytes of every tensor an operator creates count until that memory is freed;
    `peak` is the most that was alive at once."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = WeakIdKeyDictionary(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.live[t.untyped_storage()] = None
        self.peak = max(self.peak, sum(storage.nbytes() for storage in self.live))
        return out


def measure(mc, micro_batch: int, grad_accum: int, act_ckpt: bool, steps: int = 2) -> int:
    """Peak bytes of `steps` optimizer steps of train.py's step (fp32, one process), from an empty start."""
    torch.manual_seed(0)
    with PeakBytes() as counter:
        model = GPT(mc)
        model.act_ckpt = act_ckpt
        optimizer = train.configure_optimizer(model, 1e-3, (0.9, 0.95), 1e-5, 0.1)
        for _ in range(steps):
            for _ in range(grad_accum):
                x = torch.randint(0, mc.vocab_size, (micro_batch, mc.seq_len + 1))
                _, loss = model(x[:, :-1], x[:, 1:])
                (loss / grad_accum).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return counter.peak


# Small shapes whose memory is dominated by different parts: activations, weights and optimizer, the
# output layer (a GPT-2 vocabulary on a narrow model), and activation checkpointing.
SHAPES = [("cpu-mini", dict(), 8, 1, False), ("cpu-mini", dict(), 8, 2, False), ("cpu-mini", dict(), 8, 2, True),
          ("cpu-tiny", dict(seq_len=32, d_model=128, d_ff=512), 1, 1, False),
          ("cpu-tiny", dict(vocab_size=50257), 4, 2, False)]


def compare(shapes=SHAPES) -> list[dict]:
    rows = []
    for preset, overrides, micro_batch, grad_accum, act_ckpt in shapes:
        mc = config_from_preset(preset, **{"vocab_size": 257, **overrides})
        plan = processes.memory_plan(mc, micro_batch, 1, "ddp", act_ckpt, torch.float32, "cpu")["total"]
        measured = measure(mc, micro_batch, grad_accum, act_ckpt)
        rows.append({"shape": f"{preset} {overrides or ''} micro {micro_batch} x{grad_accum}{' ckpt' if act_ckpt else ''}",
                     "plan_mb": plan / 1e6, "measured_mb": measured / 1e6, "ratio": plan / measured})
    return rows


def preset_config(name: str | None) -> train.TrainConfig:
    """The settings of a HARDWARE entry: a configs/ file's, or train.py's defaults (None)."""
    argv = [] if name is None else ["--config", os.path.join(ROOT, "configs", name)]
    return settings.parse_config(train.TrainConfig, argv, "")


def preset_plans() -> list[str]:
    lines = []
    for name, (gpus, memory_gb) in HARDWARE.items():
        cfg = preset_config(name)
        mc = train.model_config(cfg, GPT2_VOCAB)
        device = "cpu" if memory_gb is None else "cuda"
        rt = processes.Runtime(0, gpus, torch.device(device), torch.float32 if device == "cpu" else torch.bfloat16)
        micro = cfg.batch_size // cfg.grad_accum
        plan = processes.memory_plan(mc, micro, gpus, cfg.parallel, cfg.act_ckpt, rt.dtype, device)
        budget = (memory_gb or 0) * processes.GB
        lines.append(f"{name or f'defaults ({cfg.model})'}: " + processes.format_plan(plan, mc, micro, cfg, rt, budget))
    return lines


def main(argv=None):
    p = settings.ArgumentParser(description=__doc__)
    p.add_argument("--measure", action="store_true", help="compare plan and measured peak at small shapes (CPU)")
    args = p.parse_args(argv)
    print("\n\n".join(preset_plans()))
    if args.measure:
        print("\nplan vs measured peak, fp32 on this CPU (goal: within 20%):")
        for row in compare():
            print(json.dumps(row))


if __name__ == "__main__":
    main()
