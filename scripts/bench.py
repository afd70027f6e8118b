"""Throughput benchmarks of the data path and the training loop (prints numbers, asserts nothing).

    python scripts/bench.py                 # CPU: mixture batches/s, train loop vs a bare loop
    python scripts/bench.py --model gpt2-124m --batch_size 16 --seq_len 1024   # on a GPU: + MFU

1. The mixture loader at a realistic geometry (default 16 x 1024 tokens): batches per second, to
   show that building a batch costs far less than a training step.
2. The training loop of train.py against a bare PyTorch loop (random tokens, same model, optimizer,
   clipping and autocast): tokens/s of each, so any overhead of the loop shows up as a difference.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import train  # noqa: E402
from model import GPT, config_from_preset  # noqa: E402


def synthetic_dataset(folder: str, vocab_size: int, n_tokens: int):
    """Random tokens in the four splits: throughput does not depend on what the tokens say."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in data.SPLITS:
        tokens = rng.integers(0, vocab_size, n_tokens if "train" in split else n_tokens // 10)
        data.write_tokens(os.path.join(folder, f"{split}.bin"), tokens, vocab_size)
        splits[split] = {"tokens": int(tokens.size), "documents": 1, "bytes": int(tokens.size), "sha256": ""}
    meta = {"tokenizer": "synthetic", "vocab_size": vocab_size, "eot_token": 0, "splits": splits, "dataset_id": "bench"}
    data.atomic_write(os.path.join(folder, "meta.json"), lambda f: json.dump(meta, f), mode="w")


def bench_mixture(folder, batch_size, seq_len, n=200):
    mix = data.Mixture(folder, 0.05, batch_size, seq_len, seed=0)
    mix.get_batch(0)
    t0 = time.perf_counter()
    for step in range(1, n + 1):
        mix.get_batch(step)
    return n / (time.perf_counter() - t0)


def bare_loop(model, cfg, rt, steps, vocab_size, seq_len):
    opt = train.configure_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    x = torch.randint(0, vocab_size, (cfg.batch_size, seq_len + 1), device=rt.device)
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps (allocator, autotune), then time
            sync(rt)
            t0 = time.perf_counter()
        with rt.autocast():
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(rt)
    return steps * cfg.batch_size * seq_len / (time.perf_counter() - t0)


def our_loop(model, cfg, rt, steps, folder, seq_len):
    mixture = data.Mixture(folder, 0.05, cfg.batch_size, seq_len, seed=0)
    opt = train.configure_optimizer(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
    marks = {}

    def on_eval(step, record):  # evals are replaced by timestamps: only the steps are timed
        sync(rt)
        marks[step] = time.perf_counter()
        return False
    cfg.eval_interval = 2
    train.train_loop(cfg, model, opt, mixture, rt, lambda: {"domain_test_loss": float("nan")}, on_eval,
                     0, steps + 2, desc="train.py loop")
    return steps * cfg.batch_size * seq_len / (marks[steps + 2] - marks[2])


def sync(rt):
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cpu-mini")
    p.add_argument("--vocab_size", type=int, default=50257)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    rt = train.setup_runtime()
    with tempfile.TemporaryDirectory() as folder:
        synthetic_dataset(folder, args.vocab_size, 4_000_000)
        print(f"mixture loader, 16 x 1024 tokens: {bench_mixture(folder, 16, 1024):,.0f} batches/s")
        cfg = train.TrainConfig(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len, log_interval=10 ** 9)
        results = {}
        for name in ("bare PyTorch loop", "train.py loop"):
            torch.manual_seed(0)
            model = GPT(config_from_preset(args.model, vocab_size=args.vocab_size, seq_len=args.seq_len)).to(rt.device)
            flops = model.flops_per_token()
            run = torch.compile(model) if args.compile else model
            if name == "bare PyTorch loop":
                results[name] = bare_loop(run, cfg, rt, args.steps, args.vocab_size, args.seq_len)
            else:
                results[name] = our_loop(run, cfg, rt, args.steps, folder, args.seq_len)
        peak = train.peak_flops(rt.device)
        print(f"\n{args.model} ({model.num_params() / 1e6:.1f}M params), batch {args.batch_size} x {args.seq_len}, "
              f"{rt.device.type}, {rt.dtype}")
        print(f"{'loop':20s} {'tokens/s':>12s} {'MFU':>8s}")
        for name, tps in results.items():
            mfu = f"{tps * flops / peak:.1%}" if peak else "-"
            print(f"{name:20s} {tps:12,.0f} {mfu:>8s}")
        overhead = results["bare PyTorch loop"] / results["train.py loop"] - 1
        print(f"train.py loop overhead vs bare: {overhead:+.1%}")


if __name__ == "__main__":
    main()
