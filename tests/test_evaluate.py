"""Evaluation: bits per byte, multiple-choice scoring on constructed cases, the continuation task,
the paper's comparison metrics on hand-made numbers, benchmark row conversion, and the CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from types import SimpleNamespace

import data
import evaluate
import run_folder
import train
from model import GPT, config_from_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FixedModel(torch.nn.Module):
    """A 'language model' that predicts the same distribution at every position: logits = log p."""

    def __init__(self, probs, seq_len=64):
        super().__init__()
        self.cfg = SimpleNamespace(seq_len=seq_len)
        self.output_weight = torch.log(torch.tensor(probs))[:, None]  # (vocab, d_model=1)

    def hidden(self, idx):
        return torch.ones(*idx.shape, 1)


def test_mcqa_scoring_picks_the_likely_option_with_and_without_normalisation():
    probs = [0.02] * 10
    probs[5] = 0.82  # token 5 is very likely, every other token 0.02
    model = FixedModel(probs)
    likely_long, unlikely_short = [5] * 30, [7]  # sum log p: 30 * -0.2 = -6.0 vs -3.9; per token -0.2 vs -3.9
    items = [{"context": [1, 2], "choices": [[7, 7], [5, 5], [3, 3]], "answer": 1},  # same length: both agree
             {"context": [1], "choices": [unlikely_short, likely_long], "answer": 1}]
    logprobs = evaluate.choice_logprobs(model, items)
    assert logprobs[1] == pytest.approx([math.log(0.02), 30 * math.log(0.82)], rel=1e-5)
    scores = evaluate.score_mcqa(model, items)
    assert scores["acc"] == 0.5  # the sum prefers the short option in item 2 ...
    assert scores["acc_norm"] == 1.0  # ... the per-token mean does not
    assert scores["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2) and scores["n"] == 2


def test_scoring_matches_the_model_loss_and_truncates_long_contexts():
    torch.manual_seed(0)
    model = GPT(config_from_preset("cpu-tiny", vocab_size=257, seq_len=16))
    context, choice = list(range(40)), [100, 101, 102]
    lp = evaluate.choice_logprobs(model, [{"context": context, "choices": [choice, choice[:1]], "answer": 0}])[0]
    seq = torch.tensor([(context + choice)[-17:]])  # the last seq_len + 1 tokens
    targets = seq[:, 1:].clone()
    targets[:, :-3] = -1
    _, loss = model(seq[:, :-1], targets)
    assert lp[0] == pytest.approx(-3 * loss.item(), rel=1e-4)
    with pytest.raises(data.DataError, match="does not fit"):
        evaluate.choice_logprobs(model, [{"context": [0], "choices": [list(range(16))], "answer": 0}])


@pytest.fixture(scope="module")
def many_docs(tmp_path_factory):
    """A byte dataset whose domain test split holds about 220 tunes (half of 440, drawn by hash), for
    statistics over 200 items."""
    from conftest import write_corpus
    root = tmp_path_factory.mktemp("many")
    gen, dom = write_corpus(str(root), n_general=20, n_domain=440, seed=1)
    out = str(root / "ds")
    data.prepare(out, f"local:{gen}", f"local:{dom}", tokenizer="byte", val_frac=0.2, test_frac=0.5, seed=0)
    return out


def test_continuation_task_is_well_formed_and_deterministic(many_docs):
    items = evaluate.continuation_task(many_docs, n_items=50, prefix_tokens=24, continuation_tokens=12, seed=3)
    assert len(items) == 50
    test = np.asarray(data.open_split(many_docs, "domain_test")).tolist()
    eot = data.load_meta(many_docs)["eot_token"]
    doc_starts = [i for i, t in enumerate(test) if t == eot]
    for item in items:
        assert len(item["context"]) == 25 and item["context"][0] == eot
        start = next(i for i in doc_starts if test[i:i + 25] == item["context"])  # the start of a held-out document
        assert test[start + 25:start + 37] == item["choices"][item["answer"]]  # and its true continuation
        assert len({tuple(c) for c in item["choices"]}) == 4 and all(len(c) == 12 for c in item["choices"])
    assert len({item["answer"] for item in items}) == 4  # the right answer is not always in one place
    assert evaluate.continuation_task(many_docs, 50, 24, 12, seed=3) == items
    assert evaluate.continuation_task(many_docs, 50, 24, 12, seed=4) != items
    with pytest.raises(data.DataError, match="fewer than the 4"):
        evaluate.continuation_task(many_docs, 10, 5000, 12)


def test_random_model_scores_chance(many_docs):
    items = evaluate.continuation_task(many_docs, n_items=200, prefix_tokens=24, continuation_tokens=4)
    torch.manual_seed(0)
    model = GPT(config_from_preset("cpu-tiny", vocab_size=257, seq_len=64))
    # A random model that knows nothing: its own random output layer. (With tied random embeddings the
    # logits favour or avoid tokens of the context, which is not knowledge-free on structured text:
    # such a model scores 0.15-0.18 here, consistently.)
    model.untie()
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)
    scores = evaluate.score_mcqa(model, items)
    assert scores["chance"] == 0.25 and scores["n"] == 200
    assert abs(scores["acc"] - 0.25) < 0.09 and abs(scores["acc_norm"] - 0.25) < 0.09  # 3 sigma at n=200


def test_mcqa_jsonl_errors_name_the_line(tmp_path):
    good = {"question": "Which key has one sharp?", "choices": ["G major", "F major"], "answer": 0}
    bad_rows = [("{not json", "not valid JSON"), (json.dumps({**good, "answer": 2}), "'answer' must be"),
                (json.dumps({**good, "choices": ["G major"]}), "at least 2"),
                (json.dumps({**good, "question": None}), "'question'"), (json.dumps([1, 2]), "JSON object")]
    for row, message in bad_rows:
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + row + "\n")
        with pytest.raises(data.DataError, match=f"q.jsonl:3: .*{message}"):
            evaluate.read_mcqa_jsonl(str(path))
    path.write_bytes(json.dumps(good).encode() + b"\n" + json.dumps(good).encode().replace(b"G", b"\xe9") + b"\n")
    with pytest.raises(data.DataError, match="q.jsonl:2: not UTF-8"):  # Latin-1, say
        evaluate.read_mcqa_jsonl(str(path))
    with pytest.raises(data.DataError, match="is not a file"):
        evaluate.read_mcqa_jsonl(str(tmp_path))
    path.write_text("\ufeff" + json.dumps(good) + "\n")  # a byte-order mark, as some editors write
    rows = evaluate.read_mcqa_jsonl(str(path))
    items = evaluate.encode_mcqa(rows, data.get_tokenizer("byte"))
    assert items[0]["context"][0] == 256 and bytes(items[0]["choices"][0]) == b" G major"


def test_benchmark_rows_convert_to_mcqa():
    music = [{"stem": "Which interval is C-G?", "options": {"A": "fifth", "B": "fourth", "C": "third", "D": "sixth"},
              "answer": "A", "abc_score": "", "instruction": "Read the question"},
             {"stem": "Key of this tune?", "options": {"A": "D", "B": "G", "C": "A", "D": "E"}, "answer": "B",
              "abc_score": "K:G\nGAB|"}]
    rows = evaluate.musictheorybench_rows(music)
    assert rows[0] == {"question": "Which interval is C-G?", "choices": ["fifth", "fourth", "third", "sixth"],
                       "answer": 0}
    assert rows[1]["question"] == "Key of this tune?\nK:G\nGAB|" and rows[1]["answer"] == 1
    with pytest.raises(data.DataError, match="row 0"):
        evaluate.musictheorybench_rows([{**music[0], "answer": "E"}])
    math_rows = [{"problem": "1+1?", "choices": ["1", "2", "3", "4"], "answer": 1, "answer_text": "2"}]
    assert evaluate.math_mcqa_rows(math_rows) == [{"question": "1+1?", "choices": ["1", "2", "3", "4"], "answer": 1}]
    chem = [{"examples": [{"input": "pH of water?", "target_scores": json.dumps({"7": 1, "1": 0, "14": 0})}]},
            {"examples": [{"input": "open question", "target": "42"}]},  # open-ended: skipped
            {"examples": [{"input": "two right", "target_scores": {"a": 1, "b": 1, "c": 0}}]}]  # skipped
    assert evaluate.chembench_rows(chem) == [{"question": "pH of water?", "choices": ["7", "1", "14"], "answer": 0}]
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(data.DataError, match="needs the `datasets` package"):
            evaluate.load_benchmark("musictheorybench")
    with pytest.raises(data.DataError, match="unknown benchmark"):
        evaluate.load_benchmark("mmlu")


def test_bits_per_byte():
    assert evaluate.bits_per_byte(math.log(2), {"tokens": 100, "bytes": 100}) == pytest.approx(1.0)
    # BPE: 4 bytes a token, so a token's bit spreads over 4 bytes
    assert evaluate.bits_per_byte(math.log(2), {"tokens": 100, "bytes": 400}) == pytest.approx(0.25)
    with pytest.raises(data.DataError):
        evaluate.bits_per_byte(1.0, {"tokens": 100, "bytes": 0})


def test_relative_gain_and_compute_multiplier():
    assert evaluate.relative_gain(2.0, 1.96) == pytest.approx(2.0)
    assert evaluate.relative_gain(2.0, 2.1) == pytest.approx(-5.0)
    npt = [(1e9, 3.0), (4e9, 2.6), (2e9, 2.8)]  # any order
    # SPT crosses NPT's final 2.6 halfway (in loss) between 2e9 and 4e9: at sqrt(2e9 * 4e9) in log tokens
    assert evaluate.compute_multiplier(npt, [(1e9, 2.9), (2e9, 2.7), (4e9, 2.5)]) == pytest.approx(math.sqrt(2))
    assert evaluate.compute_multiplier(npt, [(1e9, 2.9), (2e9, 2.6)]) == pytest.approx(2.0)  # exactly at a checkpoint
    # the first crossing counts, even if SPT later overfits back above the target
    assert evaluate.compute_multiplier(npt, [(1e9, 2.7), (2e9, 2.5), (4e9, 2.65)]) == pytest.approx(
        4e9 / math.exp(math.log(1e9) + 0.5 * math.log(2)))
    assert evaluate.compute_multiplier(npt, [(1e9, 2.9), (4e9, 2.7)]) is None  # never reached: no extrapolation
    assert evaluate.compute_multiplier(npt, [(1e9, 2.5), (4e9, 2.4)]) is None  # reached before the first point
    assert evaluate.compute_multiplier(npt, npt) == pytest.approx(1.0)  # NPT against itself
    # a noisy NPT curve that reaches its final loss before its largest budget: the crossings are compared
    bumpy = [(1e9, 2.9), (2e9, 2.5), (4e9, 2.6)]
    assert evaluate.compute_multiplier(bumpy, bumpy) == pytest.approx(1.0)
    worse = [(t, loss + 0.05) for t, loss in bumpy]  # worse than NPT at every budget
    assert evaluate.compute_multiplier(bumpy, worse) < 1
    with pytest.raises(ValueError):
        evaluate.compute_multiplier([], [(1e9, 2.0)])


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval") / "run")
    train.main(["--data_dir", tiny_data, "--out_dir", out, "--model=cpu-tiny", "--seq_len", "32",
                "--batch_size", "8", "--max_tokens", "4096", "--eval_interval", "8", "--eval_windows", "8",
                "--warmup_steps", "4", "--lr", "3e-3", "--domain_frac", "0.25"])
    return out


def test_cli_matches_the_training_log(tiny_run, tiny_data, tmp_path, capsys):
    ckpt, out = os.path.join(tiny_run, "ckpt_latest.pt"), str(tmp_path / "results.jsonl")
    mcqa = tmp_path / "q.jsonl"
    mcqa.write_text(json.dumps({"question": "X:1", "choices": ["K:D", "K:G", "K:A"], "answer": 0}) + "\n")
    evaluate.main([ckpt, ckpt, f"--mcqa={mcqa}", "--out", out, "--n_items", "4"])  # tiny_data: 5 test tunes
    table = capsys.readouterr().out
    assert "dom_test" in table and "continuation: chance 0.250" in table and "mcqa: chance 0.333" in table
    with open(out) as f:
        results = [json.loads(line) for line in f]
    with open(os.path.join(tiny_run, "log.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert len(results) == 2 and results[0]["tokens"] == last["tokens"] == 4096
    meta = data.load_meta(tiny_data)
    for name, split in train.LOSS_SPLITS:  # same windows (the run's eval_windows) as the log
        assert results[0][name] == pytest.approx(last[name], rel=1e-5)
        bpb = last[name] / math.log(2) * meta["splits"][split]["tokens"] / meta["splits"][split]["bytes"]
        assert results[0][name.replace("_loss", "_bpb")] == pytest.approx(bpb, rel=1e-5)
    assert results[0]["mcqa"]["chance"] == pytest.approx(1 / 3)
    # the continuation task fits the model's 32-token context: 24 shown, 8 offered
    assert (results[0]["continuation"]["prefix_tokens"], results[0]["continuation"]["continuation_tokens"]) == (24, 8)
    assert results[0]["continuation"]["n"] == 4 and results[0] == results[1]


def test_sample_continues_the_prompt_and_follows_the_seed(tiny_run, capsys):
    ckpt = os.path.join(tiny_run, "ckpt_latest.pt")
    model, _ = run_folder.load_model(ckpt)
    enc = data.get_tokenizer("byte")
    texts = [evaluate.sample_text(model, enc, "X:1\n", 40, 1.0, None, seed, "cpu") for seed in (0, 0, 1)]
    assert all(t.startswith("X:1\n") and len(t.encode()) >= 44 for t in texts)  # byte tokens: 40 more
    assert texts[0] == texts[1] != texts[2]
    results = evaluate.main([ckpt, "--sample", "40", "--prompt", "X:1\n", "--n_items", "4", "--temperature", "1",
                             "--top_k", "0"])
    assert results[0]["sample"] == texts[0] and f"writes:\n{texts[0]}" in capsys.readouterr().out


def test_cli_errors_are_one_line_and_write_nothing(tiny_run, tiny_data, tmp_path):
    corpus = os.path.dirname(tiny_data)
    gpt2 = str(tmp_path / "gpt2")
    data.prepare(gpt2, f"local:{corpus}/general", f"local:{corpus}/domain", tokenizer="gpt2", val_frac=0.1,
                 test_frac=0.1)
    ckpt, out = os.path.join(tiny_run, "ckpt_latest.pt"), str(tmp_path / "results.jsonl")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), ckpt, "--data", gpt2, "--out", out],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and not os.path.exists(out)
    assert result.stderr.strip().startswith("evaluate.py: ") and "257-token vocabulary" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    general_only = str(tmp_path / "general_only")
    data.prepare(general_only, f"local:{corpus}/general", None, tokenizer="byte", val_frac=0.1)
    with pytest.raises(data.DataError, match="no domain_train split"):
        evaluate.main([ckpt, "--data", general_only, "--out", out])
    with pytest.raises(train.TrainError, match="does not exist"):
        evaluate.main([str(tmp_path / "missing.pt"), "--out", out])
    for flag in ("--batch_size=0", "--eval_windows=-3", "--n_items=-1", "--prefix_tokens=0"):
        with pytest.raises(SystemExit):  # argparse: one usage line
            evaluate.main([ckpt, flag, "--out", out])
    assert not os.path.exists(out)
