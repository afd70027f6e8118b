"""Evaluation: what a checkpoint knows, in the paper's measurements.

    python evaluate.py out/d0.05/ckpt_1M.pt out/d0/ckpt_1M.pt            # data: the checkpoints' own
    python evaluate.py out/*/ft_*/ckpt_best.pt --data data/default --out results.jsonl
    python evaluate.py CKPT --mcqa questions.jsonl                         # your own 4-choice QA
    python evaluate.py CKPT --benchmark musictheorybench                   # online, needs `datasets`
    python evaluate.py CKPT --sample 300 --prompt "X:1"                    # and what it writes

What is measured, and why:

1. Losses, measured by train.mean_loss, the function every log line of train.py and finetune.py
   comes from: the mean next-token loss over the same fixed windows of each split, so the numbers
   here match the checkpoint's log. The paper's main metric is the domain *test* loss; the domain
   *train* loss shows overfitting (the gap between the two), the general validation loss shows
   forgetting.
2. Bits per byte. A loss in nats per token depends on the tokenizer: a byte-level model predicts
   ~4x as many tokens as a GPT-2 BPE model for the same text. Dividing the summed loss by the
   split's UTF-8 bytes (recorded by data.py in meta.json) gives a number both can be ranked on.
3. Multiple-choice QA, as the paper's downstream check. Each option is scored by the
   log-likelihood the model gives it after the question; the prediction is the most likely option
   (`acc`), or the most likely per token (`acc_norm`, which does not favour short options). Sources:
   a JSONL file of {"question", "choices", "answer"} rows, the paper's benchmarks online
   (MusicTheoryBench, MATH-MCQA, ChemBench), and, always available offline, a *continuation task*
   built from the held-out domain test split: the start of a held-out document, its true
   continuation and 3 continuations taken from other held-out documents. Chance is reported
   alongside, since on a tiny model "35%" means little without it.
4. The paper's comparisons between runs: the relative gain R_gain of SPT over NPT after
   finetuning, and the compute multiplier (how many fewer pretraining tokens SPT needs).
5. A sample (--sample N): N tokens the model writes after a prompt (by default after an end-of-text
   token, i.e. a new document), seeded. Numbers first, but reading what a model writes is the
   quickest sanity check there is: tunes that scan, prose that does not.

Results of the command line are printed as a table and, with --out, written as one JSON object per
checkpoint.
"""
import argparse
import contextlib
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import data
import processes
import run_folder
import settings
import train


# ---------------------------------------------------------------------------------------------
# Bits per byte

def bits_per_byte(loss: float, split_meta: dict) -> float:
    """Convert a mean loss in nats per token into bits per UTF-8 byte of the split's text.

    split_meta is the split's entry of meta.json ({"tokens", "bytes", ...}). Its token count includes
    the one end-of-text token before each document, whose loss is thereby charged to the text too:
    a model must also predict where documents end. Over the whole split, nats = loss * tokens.
    """
    if split_meta.get("bytes", 0) <= 0 or split_meta.get("tokens", 0) <= 0:
        raise data.DataError("the split's meta has no byte count: prepare the dataset again with data.py")
    return loss / math.log(2) * split_meta["tokens"] / split_meta["bytes"]


# ---------------------------------------------------------------------------------------------
# Multiple-choice QA. An *item* is tokenized: {"context": [ids], "choices": [[ids], ...], "answer": i}.
# Text rows {"question", "choices", "answer"} become items through encode_mcqa.

def check_mcqa_row(row, where: str) -> dict:
    """One {"question": str, "choices": [str, ...], "answer": index} row, or a one-line DataError."""
    if not isinstance(row, dict):
        raise data.DataError(f"{where}: expected a JSON object with question, choices and answer")
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    if not isinstance(question, str):
        raise data.DataError(f"{where}: 'question' must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise data.DataError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise data.DataError(f"{where}: 'answer' must be the index (0..{len(choices) - 1}) of the right choice")
    return {"question": question, "choices": choices, "answer": answer}


def read_mcqa_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file of multiple-choice questions; a malformed line is reported by number."""
    if not os.path.isfile(path):
        raise data.DataError(f"MCQA file {path} does not exist or is not a file")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:  # utf-8-sig skips the byte-order mark some editors put first
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise data.DataError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise data.DataError(f"{path}:{lineno}: not valid JSON")
            rows.append(check_mcqa_row(row, f"{path}:{lineno}"))
    if not rows:
        raise data.DataError(f"MCQA file {path} holds no questions")
    return rows


def encode_mcqa(rows: list[dict], enc) -> list[dict]:
    """Text rows -> items. The prompt is "<eot>Question: ...\\nAnswer:" and each option is scored as
    " <choice>" after it, the plain zero-shot format that a model with no instruction tuning can use."""
    return [{"context": [enc.eot_token] + enc.encode_ordinary(f"Question: {row['question']}\nAnswer:"),
             "choices": [enc.encode_ordinary(" " + c) for c in row["choices"]], "answer": row["answer"]}
            for row in rows]


def musictheorybench_rows(records) -> list[dict]:
    """MusicTheoryBench (m-a-p): stem, options {A..D}, answer letter, optional ABC score."""
    rows = []
    for i, r in enumerate(records):
        letters = sorted(k for k, v in (r.get("options") or {}).items() if v)
        if r.get("answer") not in letters:
            raise data.DataError(f"MusicTheoryBench row {i}: answer {r.get('answer')!r} is not one of {letters}")
        question = r["stem"] + (f"\n{r['abc_score']}" if r.get("abc_score") else "")
        rows.append(check_mcqa_row({"question": question, "choices": [r["options"][k] for k in letters],
                                    "answer": letters.index(r["answer"])}, f"MusicTheoryBench row {i}"))
    return rows


def math_mcqa_rows(records) -> list[dict]:
    """MATH-MCQA (stellaathena/math_mcqa): problem, choices, answer index."""
    return [check_mcqa_row({"question": r.get("problem"), "choices": list(r.get("choices") or []),
                            "answer": r.get("answer")}, f"MATH-MCQA row {i}") for i, r in enumerate(records)]


def chembench_rows(records) -> list[dict]:
    """ChemBench (BIG-bench format): each record holds examples with an input and target_scores
    {option: 1 or 0}. Open-ended questions (no target_scores) and ones with several right options
    are skipped, since they are not single-answer multiple choice."""
    rows = []
    for i, r in enumerate(records):
        for example in r.get("examples") or []:
            scores = example.get("target_scores")
            if isinstance(scores, str):
                scores = json.loads(scores)
            if not scores:
                continue
            choices = list(scores)
            right = [k for k, v in scores.items() if float(v) == 1.0]
            if len(right) == 1:
                rows.append(check_mcqa_row({"question": example.get("input"), "choices": choices,
                                            "answer": choices.index(right[0])}, f"ChemBench record {i}"))
    return rows


# name: (hub repository, configuration, preferred split, row converter)
BENCHMARKS = {
    "musictheorybench": ("m-a-p/MusicTheoryBench", None, "test", musictheorybench_rows),
    "math_mcqa": ("stellaathena/math_mcqa", None, "test", math_mcqa_rows),
    "chembench": ("jablonkagroup/ChemBench", "general_chemistry", "train", chembench_rows),
}


def load_benchmark(name: str) -> list[dict]:
    """Download one of the paper's benchmarks through Hugging Face `datasets` (imported only here)."""
    if name not in BENCHMARKS:
        raise data.DataError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    repo, config, split, convert = BENCHMARKS[name]
    try:
        import datasets
    except ImportError:
        raise data.DataError(f"--benchmark {name} needs the `datasets` package (pip install datasets) "
                             f"and a network connection; offline, use --mcqa FILE.jsonl")
    try:
        ds = datasets.load_dataset(repo, config)
    except Exception as e:
        raise data.DataError(f"cannot load {repo} ({type(e).__name__}): offline? use --mcqa FILE.jsonl instead")
    rows = convert(ds[split] if split in ds else ds[next(iter(ds))])
    if not rows:
        raise data.DataError(f"{repo} gave no single-answer multiple-choice questions")
    return rows


def continuation_task(data_dir: str, n_items: int = 200, prefix_tokens: int = 64, continuation_tokens: int = 32,
                      seed: int = 0, n_choices: int = 4) -> list[dict]:
    """A multiple-choice task made from the held-out domain test split, for domains without a benchmark.

    Each item shows the first `prefix_tokens` of a held-out document and offers its true next
    `continuation_tokens` among n_choices - 1 distractors: the tokens at the same position of other
    held-out documents (so every option is a plausible piece of the domain, at the same place in a
    document), never identical to the true one. Documents shorter than prefix + continuation are not
    used; each document is the question of at most one item. Deterministic given `seed`.
    """
    meta = data.load_meta(data_dir)
    tokens = np.asarray(data.open_split(data_dir, "domain_test"))
    eot = meta["eot_token"]
    bounds = np.append(np.flatnonzero(tokens == eot), len(tokens))
    need = prefix_tokens + continuation_tokens
    starts = [a + 1 for a, b in zip(bounds[:-1], bounds[1:]) if b - a - 1 >= need]
    if len(starts) < n_choices:
        raise data.DataError(f"{data_dir}/domain_test has {len(starts)} documents of >= {need} tokens, fewer than "
                             f"the {n_choices} a question needs: lower --prefix_tokens/--continuation_tokens")
    rng = np.random.default_rng(seed)
    cont = [tuple(tokens[s + prefix_tokens:s + need].tolist()) for s in starts]
    items = []
    for i in rng.permutation(len(starts))[:n_items]:
        options = [cont[i]]
        for j in rng.permutation(len(starts)):  # distractors: other documents, all options distinct
            if len(options) == n_choices:
                break
            if cont[j] not in options:
                options.append(cont[j])
        if len(options) < n_choices:
            continue
        order = rng.permutation(n_choices)
        items.append({"context": [eot] + tokens[starts[i]:starts[i] + prefix_tokens].tolist(),
                      "choices": [list(options[k]) for k in order], "answer": int(np.flatnonzero(order == 0)[0])})
    return items


@torch.no_grad()
def choice_logprobs(model, items: list[dict], batch_size: int = 32,
                    autocast=contextlib.nullcontext) -> list[list[float]]:
    """Summed log-probability of each choice's tokens given the context, per item.

    Every (context, choice) pair is one row, right-padded within its batch (a causal model never
    looks right, so the padding changes nothing). Only the hidden states at choice positions go
    through the output layer, so a 50k vocabulary costs (choice tokens x vocab), not (rows x seq x vocab).
    The context is left-truncated to fit the model's seq_len.
    """
    was_training = model.training
    model.eval()
    seq_len, device = model.cfg.seq_len, model.output_weight.device
    pairs = []
    for n, item in enumerate(items):
        for choice in item["choices"]:
            if not 0 < len(choice) < seq_len:
                raise data.DataError(f"item {n}: a choice of {len(choice)} tokens does not fit the model's "
                                     f"context of {seq_len} after at least one context token")
            pairs.append((item["context"] + choice)[-(seq_len + 1):])
    n_choice_tokens = [len(c) for item in items for c in item["choices"]]
    sums = []
    for start in range(0, len(pairs), batch_size):
        chunk, lengths = pairs[start:start + batch_size], n_choice_tokens[start:start + batch_size]
        width = max(len(p) for p in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -1, dtype=torch.long)
        for r, (seq, k) in enumerate(zip(chunk, lengths)):
            x[r, :len(seq) - 1] = torch.tensor(seq[:-1])
            y[r, len(seq) - 1 - k:len(seq) - 1] = torch.tensor(seq[-k:])  # targets: the choice tokens only
        x, y = x.to(device), y.to(device)
        with autocast():
            hidden = model.hidden(x)
        mask = y != -1
        logits = hidden[mask].float() @ model.output_weight.float().t()
        token_lp = F.log_softmax(logits, dim=-1).gather(1, y[mask][:, None]).squeeze(1)
        rows = torch.arange(len(chunk), device=device)[:, None].expand_as(y)[mask]
        sums += torch.zeros(len(chunk), device=device).index_add_(0, rows, token_lp).tolist()
    model.train(was_training)
    out, k = [], 0
    for item in items:
        out.append(sums[k:k + len(item["choices"])])
        k += len(item["choices"])
    return out


def score_mcqa(model, items: list[dict], batch_size: int = 32, autocast=contextlib.nullcontext) -> dict:
    """Accuracy of picking the most likely choice (acc) and the most likely per token (acc_norm),
    with chance (the mean of 1 / number of choices) and the number of items."""
    if not items:
        raise data.DataError("no multiple-choice items to score")
    logprobs = choice_logprobs(model, items, batch_size, autocast)
    acc = acc_norm = 0
    for item, lp in zip(items, logprobs):
        per_token = [v / len(c) for v, c in zip(lp, item["choices"])]
        acc += int(np.argmax(lp)) == item["answer"]
        acc_norm += int(np.argmax(per_token)) == item["answer"]
    n = len(items)
    return {"acc": acc / n, "acc_norm": acc_norm / n,
            "chance": float(np.mean([1 / len(item["choices"]) for item in items])), "n": n}


# ---------------------------------------------------------------------------------------------
# The paper's comparisons between runs

def relative_gain(loss_npt_ft: float, loss_spt_ft: float) -> float:
    """R_gain = 100 * (L_NPT->FT - L_SPT->FT) / L_NPT->FT, in percent; L is the best post-finetuning
    domain test loss. Positive when SPT wins (paper at 200B tokens: 0.8% to 2.0%)."""
    if not loss_npt_ft > 0:
        raise ValueError(f"loss_npt_ft must be a positive loss, got {loss_npt_ft}")
    return 100.0 * (loss_npt_ft - loss_spt_ft) / loss_npt_ft


def compute_multiplier(npt_points, spt_points) -> float | None:
    """How many times fewer pretraining tokens SPT->FT needs to match NPT->FT (the paper's 1.4-1.75x).

    Points are (pretrain_tokens, best post-finetuning domain test loss), one per finetuned checkpoint.
    The target is NPT->FT's loss at its largest budget. For each recipe, walking its checkpoints in
    order of tokens, the first one whose loss is <= the target is found and the crossing interpolated
    between it and the previous checkpoint, linearly in log tokens (losses are close to power laws,
    i.e. smooth in log T). The multiplier is T_npt / T_spt. NPT's own crossing can come before its
    largest budget when its curve is not monotone (noise): NPT against itself is then still 1x.

    Returns None when a recipe's checkpoints do not bracket its crossing: SPT never reaches the target
    (the multiplier would be < T_npt / T_spt_max, an extrapolation), or a smallest checkpoint is
    already better (the crossing lies somewhere before it, unknown). Add checkpoints rather than
    extrapolate.
    """
    npt, spt = sorted(npt_points), sorted(spt_points)
    if not npt or not spt or min(t for t, _ in npt + spt) <= 0:
        raise ValueError("give at least one (tokens > 0, loss) point for each of NPT and SPT")
    target = npt[-1][1]
    t_npt, t_spt = first_crossing(npt, target), first_crossing(spt, target)
    return None if t_npt is None or t_spt is None else float(t_npt / t_spt)


def first_crossing(points, target) -> float | None:
    """Tokens at which a sorted (tokens, loss) curve first reaches `target`, interpolated in log tokens;
    None when it never does or its first point is already below it."""
    for k, (tokens, loss) in enumerate(points):
        if loss <= target:
            if k == 0:
                return float(tokens) if loss == target else None
            (t0, l0), (t1, l1) = points[k - 1], (tokens, loss)
            frac = (l0 - target) / (l0 - l1)
            return float(math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))))
    return None


# ---------------------------------------------------------------------------------------------
# One checkpoint, and the command line

def evaluate_checkpoint(path: str, data_dir: str | None = None, eval_windows: int | None = None,
                        mcqa: list[dict] | None = None, n_items: int = 200, prefix_tokens: int | None = None,
                        continuation_tokens: int | None = None, seed: int = 0, device: str = "auto",
                        batch_size: int = 32, sample: dict | None = None) -> dict:
    """Losses, bits per byte, the continuation task and (given text rows) MCQA accuracy of one checkpoint.

    data_dir defaults to the dataset the checkpoint was trained on, eval_windows to the number its
    run logged with, so the losses here match the ones in its log.jsonl. The continuation task
    shows 64 tokens and offers 32, or less where the model's context is shorter (a quarter of it
    for the options, the rest for the prefix). `sample`: sample_text's prompt, n_tokens, temperature
    and top_k, to add what the model writes.
    """
    rt = processes.setup_runtime(device)
    model, ckpt = run_folder.load_model(path, rt.device)
    run = settings.config_from_dict(train.TrainConfig, ckpt["config"], f"{path}'s config")  # the run that wrote it
    data_dir = data_dir or run.data_dir
    meta = data.load_meta(data_dir)
    run_folder.check_vocabulary(ckpt, meta, path, data_dir)
    splits = {name: data.open_split(data_dir, split) for name, split in train.LOSS_SPLITS}
    seq_len = model.cfg.seq_len
    windows = eval_windows or run.eval_windows
    result = {"checkpoint": path, "tokens": ckpt["tokens"], "domain_frac": run.domain_frac,
              "dataset_id": meta["dataset_id"], "tokenizer": meta["tokenizer"], "eval_windows": windows}
    if "finetune" in ckpt:
        result["finetune"] = ckpt["finetune"]
    for (name, split), tokens in zip(train.LOSS_SPLITS, splits.values()):
        loss = train.mean_loss(model, tokens, seq_len, windows, batch_size, rt.device, rt.autocast)
        result[name] = loss
        result[name.replace("_loss", "_bpb")] = bits_per_byte(loss, meta["splits"][split])
    continuation_tokens = continuation_tokens or min(32, seq_len // 4)
    prefix_tokens = prefix_tokens or min(64, seq_len - continuation_tokens)
    items = continuation_task(data_dir, n_items, prefix_tokens, continuation_tokens, seed)
    result["continuation"] = {**score_mcqa(model, items, batch_size, rt.autocast),
                              "prefix_tokens": prefix_tokens, "continuation_tokens": continuation_tokens}
    if mcqa:
        result["mcqa"] = score_mcqa(model, encode_mcqa(mcqa, data.get_tokenizer(meta["tokenizer"])),
                                    batch_size, rt.autocast)
    if sample:
        result["sample"] = sample_text(model, data.get_tokenizer(meta["tokenizer"]), **sample, seed=seed,
                                       device=rt.device, autocast=rt.autocast)
    return result


def sample_text(model, enc, prompt: str, n_tokens: int, temperature: float, top_k: int | None, seed: int,
                device, autocast=contextlib.nullcontext) -> str:
    """The prompt and n_tokens the model samples after it (the same text for the same seed)."""
    ids = [enc.eot_token] + enc.encode_ordinary(prompt)  # a prompt starts a new document
    with torch.random.fork_rng(), autocast():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        out = model.eval().generate(torch.tensor([ids], device=device), n_tokens, temperature, top_k)
    return enc.decode(out[0, 1:].tolist())


def format_table(results: list[dict]) -> str:
    cols = [("tokens", "tokens", "{:,}"), ("domain_frac", "delta", "{:g}"), ("general_val_loss", "gen_val", "{:.4f}"),
            ("domain_train_loss", "dom_train", "{:.4f}"), ("domain_test_loss", "dom_test", "{:.4f}"),
            ("domain_test_bpb", "test_bpb", "{:.4f}")]
    tasks = [t for t in ("continuation", "mcqa") if any(t in r for r in results)]
    header = ["checkpoint"] + [c[1] for c in cols] + [f"{t[:4]}_{m}" for t in tasks for m in ("acc", "norm")]
    lines = [header]
    for r in results:
        row = [r["checkpoint"]] + ["-" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols]
        row += [f"{r[t][m]:.3f}" if t in r else "-" for t in tasks for m in ("acc", "acc_norm")]
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in lines)
    chance = {t: next(r[t]["chance"] for r in results if t in r) for t in tasks}
    return text + "".join(f"\n{t}: chance {c:.3f}, {next(r[t]['n'] for r in results if t in r)} items"
                          for t, c in chance.items())


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be an integer >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
    return value


def check_writable(path: str):
    """--out is checked before the evaluation, not after it: a typo should not cost the whole run."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise data.DataError(f"--out {path}: cannot write a file there; give a path in an existing, writable folder")


def main(argv=None):
    p = settings.ArgumentParser(description=__doc__)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoints to evaluate: ckpt_<tokens>.pt, ft_.../ckpt_best.pt")
    p.add_argument("--data", default=None, help="dataset folder (default: each checkpoint's own)")
    p.add_argument("--mcqa", default=None, help="also score this JSONL file of {question, choices, answer} rows")
    p.add_argument("--benchmark", default=None, choices=list(BENCHMARKS), help="also score a paper benchmark (online)")
    p.add_argument("--out", default=None, help="write one JSON line per checkpoint to this file")
    p.add_argument("--eval_windows", type=positive_int, default=None,
                   help="fixed windows per split (default: the checkpoint's run's, so losses match its log)")
    p.add_argument("--n_items", type=positive_int, default=200, help="questions of the continuation task")
    p.add_argument("--prefix_tokens", type=positive_int, default=None,
                   help="tokens a continuation question shows (default: 64, less for short contexts)")
    p.add_argument("--continuation_tokens", type=positive_int, default=None,
                   help="tokens of each option (default: 32, less for short contexts)")
    p.add_argument("--sample", type=non_negative_int, default=0, metavar="N",
                   help="also print N tokens the model writes")
    p.add_argument("--prompt", default="", help="what the sample continues (default: a new document)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature")
    p.add_argument("--top_k", type=non_negative_int, default=200, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the continuation task and the sample")
    p.add_argument("--batch_size", type=positive_int, default=32, help="windows or options per forward pass")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N or mps")
    args = p.parse_args(argv)
    if args.out:
        check_writable(args.out)
    rows = read_mcqa_jsonl(args.mcqa) if args.mcqa else []
    if args.benchmark:
        rows += load_benchmark(args.benchmark)
    sample = args.sample and dict(prompt=args.prompt, n_tokens=args.sample, temperature=args.temperature,
                                  top_k=args.top_k or None)
    results = [evaluate_checkpoint(path, args.data, args.eval_windows, rows, args.n_items, args.prefix_tokens,
                                   args.continuation_tokens, args.seed, args.device, args.batch_size, sample)
               for path in args.checkpoints]
    print(format_table(results))
    for r in results:
        if "sample" in r:
            print(f"\n--- {r['checkpoint']} writes:\n{r['sample']}")
    if args.out:  # only once every checkpoint is done: a failure leaves no half-written file
        try:
            settings.atomic_write(args.out, lambda f: f.writelines(json.dumps(r) + "\n" for r in results), mode="w")
        except OSError as e:
            raise data.DataError(f"cannot write --out {args.out} ({e.strerror}): the table above is all there is; "
                                 f"free space or pick another --out and run again")
    return results


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, train.TrainError) as e:
        sys.exit(f"evaluate.py: {e}")
