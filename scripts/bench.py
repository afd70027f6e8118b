"""Throughput benchmarks: the data path, the training loop, the kernels in a training step, data preparation.

    python scripts/bench.py                 # CPU: mixture batches/s, train.py's loop vs a bare loop
    python scripts/bench.py --model gpt2-124m --batch_size 16 --seq_len 1024 --steps 40 --warm_steps 10 --kernels
    TRITON_INTERPRET=1 python scripts/bench.py --model cpu-tiny --vocab_size 256 --batch_size 2 --seq_len 64 \
        --steps 2 --warm_steps 1 --kernels     # the kernels' path anywhere, through Triton's interpreter
    python scripts/bench.py --prepare --mb 300                                 # data preparation

1. The mixture loader at a realistic geometry (16 x 1024 tokens): batches per second, to show that
   building a batch costs far less than a training step.
2. train.py's train_loop against a bare PyTorch loop (the same model, optimizer, clipping and
   autocast, on batches of a learnable synthetic token stream): tokens/s of each (and MFU on a GPU
   train.py knows), so any overhead of the loop shows up as a difference.
3. With --kernels: the bare loop with the Triton kernels on and off (SPT_KERNELS=triton / torch):
   tokens/s, MFU, peak memory and the loss after the steps, which must agree within 2% (the script
   exits with status 1 otherwise). kernels/bench.py checks and times the kernels on their own.
4. With --prepare, instead: data.py's preparation of a local corpus of --mb MB made from the shipped
   `english` source (copies of its documents, each made distinct), GPT-2 tokens: tokens/s with 1 and
   2 worker processes, each worker's speed against tiktoken's own single-core encoding of the same
   text, the peak memory (proportional set size, summed over the process and its workers) on the
   corpus and on a tenth of it, and the projection to 200B tokens on 64 cores. Each preparation runs
   as `python data.py` in a subprocess; each kind is repeated (--repeats, interleaved) and its fastest
   kept. Speed per worker is in CPU time (tiktoken's too): the tokens of the corpus beyond its tenth
   over the CPU seconds they took, so that start-up cancels out. Cores of a virtual machine need not
   be equal (another tenant may share one), so the bench first times tiktoken pinned to each of two
   CPUs, alone and both busy at once: one worker (and tiktoken alone) then runs pinned to the faster
   CPU, and the tokens/s of both CPUs at once over the faster's alone is the machine's ceiling for the
   scaling from 1 to 2 workers, printed beside it.
   The goals it prints against: >= 1.8x from 1 to 2 workers, >= 80% of tiktoken per worker, peak
   memory within 10% when the corpus grows 10x.
Numbers from a machine shared with other work are noisy: rerun on an idle one.
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import corpora  # noqa: E402
import data  # noqa: E402
import processes  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from model import GPT, PRESETS, config_from_preset  # noqa: E402

# The optimizer of every loop here: train.py's AdamW and clipping, at a constant learning rate
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 1e-3, (0.9, 0.95), 1e-5, 0.1, 1.0


def sync(device: torch.device):
    """Wait for the GPU, so that a clock reads the time the work took, not the time it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_dataset(folder: str, vocab_size: int, n_tokens: int):
    """Random tokens in the four splits: throughput does not depend on what the tokens say."""
    rng = np.random.default_rng(0)
    shards = os.path.join(folder, "shards-bench")
    os.makedirs(shards)
    splits = {}
    for split in data.SPLITS:
        tokens = rng.integers(0, vocab_size, n_tokens if "train" in split else n_tokens // 10)
        writer = data.SplitWriter(shards, split, vocab_size, data.SHARD_TOKENS)
        writer.append(tokens)
        splits[split] = {**writer.close(), "documents": 1, "bytes": int(tokens.size)}
    meta = {"tokenizer": "synthetic", "vocab_size": vocab_size, "eot_token": 0, "splits": splits, "dataset_id": "bench",
            "shard_dir": "shards-bench"}
    settings.atomic_write(os.path.join(folder, "meta.json"), lambda f: json.dump(meta, f), mode="w")


def synthetic_batches(n: int, batch_size: int, seq_len: int, vocab_size: int, device) -> list:
    """n (inputs, targets) batches of a learnable token stream: each token is a fixed successor of the
    previous one 3/4 of the time, so the loss after a few steps says whether training works."""
    g = torch.Generator().manual_seed(0)
    used = min(vocab_size, 1024)
    successor = torch.randperm(used, generator=g)
    x = torch.empty(n * batch_size, seq_len + 1, dtype=torch.long)
    x[:, 0] = torch.randint(0, used, (n * batch_size,), generator=g)
    for i in range(seq_len):
        follow = torch.rand(n * batch_size, generator=g) < 0.75
        x[:, i + 1] = torch.where(follow, successor[x[:, i]], torch.randint(0, used, (n * batch_size,), generator=g))
    x = x.view(n, batch_size, seq_len + 1).to(device)
    return [(b[:, :-1], b[:, 1:]) for b in x]


def bench_mixture(folder, batch_size, seq_len, n=200):
    mix = data.Mixture(folder, 0.05, batch_size, seq_len, seed=0)
    mix.get_batch(0)
    t0 = time.perf_counter()
    for step in range(1, n + 1):
        mix.get_batch(step)
    return n / (time.perf_counter() - t0)


def bare_loop(model, rt, batches, warm_steps: int) -> dict:
    """The training step in plain PyTorch, one batch per step: tokens/s after warm_steps untimed ones,
    the peak memory (GPU) and the last loss."""
    optimizer = train.configure_optimizer(model, LR, BETAS, EPS, WEIGHT_DECAY)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step, (x, y) in enumerate(batches):
        if step == warm_steps:  # allocator, autotuning: then time
            sync(rt.device)
            t0 = time.perf_counter()
        with rt.autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(rt.device)
    return {"tokens/s": (len(batches) - warm_steps) * x.numel() / (time.perf_counter() - t0), "loss": loss.item(),
            "peak GB": torch.cuda.max_memory_allocated() / 2 ** 30 if rt.device.type == "cuda" else None}


def our_loop(model, rt, steps: int, warm_steps: int, folder: str, batch_size: int, seq_len: int) -> dict:
    """train.py's train_loop over the same number of steps; its evals are replaced by timestamps."""
    mixture = data.Mixture(folder, 0.05, batch_size, seq_len, seed=0)
    optimizer = train.configure_optimizer(model, LR, BETAS, EPS, WEIGHT_DECAY)
    schedule = train.Schedule("constant", LR, LR, warmup_steps=0, total_steps=steps + warm_steps)
    marks = {}
    for record in train.train_loop(model, optimizer, schedule, mixture, range(steps + warm_steps), rt,
                                   lambda: {"domain_test_loss": math.nan}, lambda step: step == warm_steps,
                                   grad_accum=1, grad_clip=GRAD_CLIP, desc="train.py loop"):
        sync(rt.device)
        marks[record["step"]] = time.perf_counter()
    return {"tokens/s": steps * batch_size * seq_len / (marks[steps + warm_steps] - marks[warm_steps])}


def bench_training(args, rt, folder):
    """Sections 2 and 3: the loops, then (--kernels) the kernels on and off; returns False if the
    losses with kernels on and off disagree."""
    mc = config_from_preset(args.model, vocab_size=args.vocab_size, seq_len=args.seq_len)
    batches = synthetic_batches(args.warm_steps + args.steps, args.batch_size, args.seq_len, args.vocab_size,
                                rt.device)
    runs = {}

    def fresh_model():
        torch.manual_seed(0)
        model = GPT(mc).to(rt.device)
        return model, processes.wrap_model(model, rt, compile=args.compile)

    model, wrapped = fresh_model()
    runs["bare PyTorch loop"] = bare_loop(wrapped, rt, batches, args.warm_steps)
    model, wrapped = fresh_model()
    runs["train.py loop"] = our_loop(wrapped, rt, args.steps, args.warm_steps, folder, args.batch_size, args.seq_len)
    if args.kernels:
        for mode in ("triton", "torch"):
            os.environ["SPT_KERNELS"] = mode
            model, wrapped = fresh_model()
            runs[f"SPT_KERNELS={mode}"] = bare_loop(wrapped, rt, batches, args.warm_steps)
        del os.environ["SPT_KERNELS"]
    peak, flops = processes.peak_flops(rt.device), model.flops_per_token()
    print(f"\n{args.model} ({model.num_params() / 1e6:.1f}M params), batch {args.batch_size} x {args.seq_len}, "
          f"{rt.device.type}, {str(rt.dtype).removeprefix('torch.')}, {args.steps} steps timed after {args.warm_steps}")
    loss_at = f"loss @ {args.warm_steps + args.steps}"
    print(f"{'loop':20s} {'tokens/s':>12s} {'MFU':>8s} {'peak GB':>8s} {loss_at:>10s}")
    for name, r in runs.items():
        mfu = f"{r['tokens/s'] * flops / peak:.1%}" if peak else "-"
        gb = "-" if r.get("peak GB") is None else f"{r['peak GB']:.2f}"
        loss = "-" if "loss" not in r else f"{r['loss']:.4f}"
        print(f"{name:20s} {r['tokens/s']:12,.0f} {mfu:>8s} {gb:>8s} {loss:>10s}")
    overhead = runs["bare PyTorch loop"]["tokens/s"] / runs["train.py loop"]["tokens/s"] - 1
    print(f"train.py loop overhead vs bare: {overhead:+.1%}")
    if not args.kernels:
        return True
    on, off = runs["SPT_KERNELS=triton"]["loss"], runs["SPT_KERNELS=torch"]["loss"]
    agree = abs(on - off) <= 0.02 * abs(off)
    print(f"{'ok  ' if agree else 'FAIL'} {loss_at}: kernels on {on:.4f}, off {off:.4f} (must agree within 2%)")
    return agree


def write_corpus(folder: str, mb: float) -> int:
    """JSON-lines files of `english` documents in a seeded random order (so that a tenth of the corpus
    has documents as long as the whole: tokenizing a long one takes memory), copied until `mb` MB, each
    copy made distinct (deduplication keeps it) by a first line naming it. Returns the documents' count."""
    os.makedirs(folder)
    docs = [d for d in corpora.SOURCES["english"].documents() if d.strip()]
    docs = [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]
    written, n, out = 0, 0, None
    while written < mb * 1e6:
        if n % 20000 == 0:  # files of ~60 MB: several units each
            out = open(os.path.join(folder, f"{n // 20000:04d}.jsonl"), "w")
        line = json.dumps({"text": f"copy {n // len(docs)}\n{docs[n % len(docs)]}"}) + "\n"
        out.write(line)
        written, n = written + len(line), n + 1
    out.close()
    return n


def tree_memory(pid: int) -> int:
    """Proportional set size of a process and its descendants, in bytes (shared pages counted once)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += 1024 * next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack += [int(child) for child in f.read().split()]
        except (OSError, StopIteration):  # it ended while we looked
            continue
    return total


def timed_prepare(corpus: str, out: str, workers: int, cpu: int | None = None) -> dict:
    """`python data.py` on the corpus (general only, GPT-2), pinned to `cpu` if given, its peak memory
    sampled every 20 ms."""
    cmd = [sys.executable, os.path.join(ROOT, "data.py"), f"--general=local:{corpus}", "--domain=", f"--out={out}",
           f"--workers={workers}", "--val_frac=0.01"]
    t0, peak, cpu0 = time.perf_counter(), 0, resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}))
    while proc.poll() is None:
        peak = max(peak, tree_memory(proc.pid))
        time.sleep(0.02)
    wall, said, cpu1 = time.perf_counter() - t0, proc.stdout.read(), resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"\(tokenize ([\d.]+)s, assemble ([\d.]+)s\): (.*) tokens", said)
    if proc.returncode or not found:
        sys.exit(f"bench.py: {' '.join(cmd)} failed: {said.strip()[-300:]}")
    tokens = sum(int(n.replace(",", "")) for n in re.findall(r"[\d,]{2,}", found.group(3)))
    cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime  # of data.py and its workers
    return {"tokens": tokens, "wall": wall, "tokenize": float(found.group(1)), "assemble": float(found.group(2)),
            "peak": peak, "cpu": cpu_s}


def encode_seconds(corpus: str, mb: float, cpu: int) -> tuple[int, float, float]:
    """tiktoken's own GPT-2 encoding of the corpus's first `mb` MB of text, in this process pinned to
    `cpu`: the tokens, and the wall and CPU seconds of the encoding alone (not the reading)."""
    os.sched_setaffinity(0, {cpu})
    enc, texts, size = data.get_tokenizer("gpt2"), [], 0
    with open(os.path.join(corpus, sorted(os.listdir(corpus))[0])) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size > mb * 1e6:
                break
    wall, cpu_s = time.perf_counter(), time.process_time()
    tokens = sum(len(enc.encode_ordinary(text)) for text in texts)
    return tokens, time.perf_counter() - wall, time.process_time() - cpu_s


def machine_cpus(corpus: str, mb: float, rounds: int) -> dict:
    """What this machine's CPUs give: tiktoken pinned to each of (up to) two CPUs, alone and both at
    once, in `rounds` interleaved rounds (in a pool, so that this process stays unpinned); of each, the
    median run (not the fastest: a virtual machine's core speeds up or slows down by 20% within seconds).
    Returns the faster CPU, tiktoken's tokens and CPU seconds on it alone, and the ceiling for the
    scaling from one worker on it to two: the tokens/s of both CPUs at once over its alone."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    alone, together = {cpu: [] for cpu in cpus}, {cpu: [] for cpu in cpus}
    with ProcessPoolExecutor(len(cpus)) as pool:
        for _ in range(rounds):
            for cpu in cpus:
                alone[cpu].append(pool.submit(encode_seconds, corpus, mb, cpu).result())
            for cpu, run in zip(cpus, pool.map(encode_seconds, [corpus] * len(cpus), [mb] * len(cpus), cpus)):
                together[cpu].append(run)
    tokens = alone[cpus[0]][0][0]
    alone, together = ({cpu: sorted(runs, key=lambda r: r[1])[len(runs) // 2] for cpu, runs in kind.items()}
                       for kind in (alone, together))  # the median run, by wall time
    fast = min(cpus, key=lambda cpu: alone[cpu][1])
    for cpu in cpus:
        print(f"tiktoken pinned to CPU {cpu}: {tokens / alone[cpu][1]:,.0f} tokens/s alone, "
              f"{tokens / together[cpu][1]:,.0f} with both CPUs busy (medians of {rounds} rounds)")
    return {"cpu": fast, "tokens": tokens, "cpu_s": alone[fast][2],
            "ceiling": sum(alone[fast][1] / run[1] for run in together.values())}


def bench_prepare(mb: float, repeats: int):
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing a {mb:g} MB corpus and a tenth of it from the english source...")
        n_docs = write_corpus(os.path.join(tmp, "full"), mb)
        write_corpus(os.path.join(tmp, "tenth"), mb / 10)
        machine = machine_cpus(os.path.join(tmp, "full"), min(mb / 30, 10), 3 * repeats)
        # the fastest of `repeats` runs each, interleaved: one run's speed drifts by 10-20% on a small machine
        runs = {}
        for i in tqdm(range(repeats), desc="prepare runs", unit="round"):
            for name, w in (("tenth", 1), ("full", 1), ("full", 2)):
                out = os.path.join(tmp, f"ds-{name}-{w}-{i}")
                r = timed_prepare(os.path.join(tmp, name), out, w, machine["cpu"] if w == 1 else None)
                shutil.rmtree(out)
                if (name, w) not in runs or r["tokenize"] < runs[name, w]["tokenize"]:
                    runs[name, w] = r
    one, two, tenth = runs["full", 1], runs["full", 2], runs["tenth", 1]
    print(f"\n{mb:g} MB of text, {n_docs:,} documents, {one['tokens']:,} GPT-2 tokens ({os.cpu_count()} CPUs; "
          f"one worker pinned to CPU {machine['cpu']}, the faster)")
    print(f"{'workers':>8s} {'tokenize s':>11s} {'assemble s':>11s} {'wall s':>8s} {'tokens/s':>12s} "
          f"{'tokenizing tokens/s':>20s} {'CPUs used':>10s} {'peak memory':>12s}")
    for (name, w), r in runs.items():
        print(f"{w:>8d} {r['tokenize']:11.1f} {r['assemble']:11.1f} {r['wall']:8.1f} {r['tokens'] / r['wall']:12,.0f} "
              f"{r['tokens'] / r['tokenize']:20,.0f} {r['cpu'] / r['wall']:10.2f} {r['peak'] / 2 ** 20:9,.0f} MB"
              f"   ({name} corpus)")
    scaling, ceiling = one["tokenize"] / two["tokenize"], machine["ceiling"]
    # per CPU second of the corpus beyond its tenth: the start-up (Python, imports) cancels out
    per_worker = (one["tokens"] - tenth["tokens"]) / (one["cpu"] - tenth["cpu"])
    encode = machine["tokens"] / machine["cpu_s"]
    growth = one["peak"] / tenth["peak"] - 1
    efficiency = min(1.0, scaling / ceiling)  # of what the cores give: measured at 2 workers, assumed at 64
    rate_64 = per_worker * 64 * efficiency
    assemble_rate = one["tokens"] / max(one["assemble"], 1e-9)
    print(f"\n{'goal':46s} {'measured':>12s}")
    print(f"{'1 -> 2 workers, tokenizing >= 1.8x':46s} {scaling:11.2f}x {'ok' if scaling >= 1.8 else 'MISSED'} "
          f"(this machine's CPUs allow {ceiling:.2f}x: the workers get {scaling / ceiling:.0%} of it)")
    print(f"{'per worker >= 80% of tiktoken (' + f'{encode:,.0f} tokens/cpu s)':46s} {per_worker / encode:11.0%} "
          f"{'ok' if per_worker >= 0.8 * encode else 'MISSED'} (per CPU second, reading and assembling included)")
    print(f"{'peak memory, corpus x10: within 10%':46s} {growth:+11.1%} {'ok' if abs(growth) <= 0.1 else 'MISSED'}")
    print(f"\n200B tokens on 64 equal cores at {efficiency:.0%} parallel efficiency: tokenizing "
          f"{200e9 / rate_64 / 3600:.1f} h at {rate_64:,.0f} tokens/s (reading the text not included), then "
          f"assembling on one machine {200e9 / assemble_rate / 3600:.1f} h at {assemble_rate:,.0f} tokens/s")


def main(argv=None):
    p = settings.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="cpu-mini", choices=list(PRESETS), help="model preset (model.py)")
    p.add_argument("--vocab_size", type=settings.integer, default=50257, help="vocabulary of the synthetic tokens")
    p.add_argument("--batch_size", type=settings.integer, default=32, help="sequences per step")
    p.add_argument("--seq_len", type=settings.integer, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=settings.integer, default=10, help="optimizer steps timed per loop")
    p.add_argument("--warm_steps", type=settings.integer, default=2,
                   help="untimed steps first (the allocator, the kernels' autotuning)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--kernels", action="store_true", help="also the bare loop with the Triton kernels on and off")
    p.add_argument("--prepare", action="store_true", help="benchmark data preparation instead (CPU only)")
    p.add_argument("--mb", type=float, default=300, help="--prepare: corpus size in MB of text")
    p.add_argument("--repeats", type=settings.integer, default=3, help="--prepare: runs of each kind, the fastest kept")
    args = p.parse_args(argv)
    if args.prepare:
        return bench_prepare(args.mb, args.repeats)
    rt = processes.setup_runtime()
    with tempfile.TemporaryDirectory() as folder:
        synthetic_dataset(folder, args.vocab_size, 4_000_000)
        print(f"mixture loader, 16 x 1024 tokens: {bench_mixture(folder, 16, 1024):,.0f} batches/s")
        if not bench_training(args, rt, folder):
            sys.exit(1)


if __name__ == "__main__":
    main()
