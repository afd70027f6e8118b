"""Token files, datasets and their shards, prepare's splits and its resumability, and the mixture: the
contracts the rest relies on."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import corpora
import data
import settings


def test_gpt2_tokenizer_matches_known_ids():
    enc = data.get_tokenizer("gpt2")
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" The quick brown fox") == [383, 2068, 7586, 21831]
    assert enc.decode(enc.encode_ordinary("naïve café ♪")) == "naïve café ♪"


def test_byte_tokenizer_is_bytes_plus_eot():
    enc = data.get_tokenizer("byte")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    text = "X:1\nK:D\n|:A2B c2d:| é"
    assert enc.encode_ordinary(text) == list(text.encode("utf-8"))


def write_tokens(path, tokens, vocab_size):
    with data.TokenWriter(path, vocab_size) as writer:
        writer.append(tokens)


def test_token_file_roundtrip_and_dtype(tmp_path):
    for vocab, dtype in ((257, np.uint16), (70000, np.uint32)):
        tokens = np.random.default_rng(0).integers(0, vocab, 1000)
        path = str(tmp_path / f"t{vocab}.bin")
        write_tokens(path, tokens, vocab)
        back = data.read_tokens(path, vocab)
        assert back.dtype == dtype and np.array_equal(back, tokens)


def test_token_file_errors(tmp_path):
    path = str(tmp_path / "t.bin")
    write_tokens(path, np.arange(100), 257)
    with pytest.raises(data.DataError, match="vocabulary"):
        data.read_tokens(path, 50257)
    with open(path, "r+b") as f:  # truncate: drop the last tokens
        f.truncate(os.path.getsize(path) - 10)
    with pytest.raises(data.DataError, match="truncated"):
        data.read_tokens(path)
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"\x00" * 200)
    with pytest.raises(data.DataError, match="magic"):
        data.read_tokens(str(foreign))
    with pytest.raises(data.DataError, match="is missing"):
        data.read_tokens(str(tmp_path / "missing.bin"))
    with pytest.raises(data.DataError, match="vocab size"):
        write_tokens(str(tmp_path / "bad.bin"), np.array([300]), 257)


def split_tokens(data_dir, split):
    return np.asarray(data.open_split(data_dir, split))


def documents_of(tokens, eot):
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b].tobytes() for a, b in zip(cuts[:-1], cuts[1:])]


def byte_tokens(text):
    return np.frombuffer(text.encode(), np.uint8).astype(np.uint16).tobytes()


def folder_bytes(folder, skip=()):
    """Every file under `folder` (relative path -> content), but those under the names in `skip` and the
    lock file (which says who last held the folder: not data)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in set(files) - {settings.LOCK_NAME}:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


# --- datasets: meta.json and shards -------------------------------------------------------------

def test_splits_are_document_disjoint_and_meta_consistent(tiny_data):
    meta = data.load_meta(tiny_data)
    docs = {s: documents_of(split_tokens(tiny_data, s), meta["eot_token"]) for s in data.SPLITS}
    for s in data.SPLITS:
        assert len(docs[s]) == meta["splits"][s]["documents"] > 0
        assert split_tokens(tiny_data, s)[0] == meta["eot_token"]
        assert sum(shard["tokens"] for shard in meta["splits"][s]["shards"]) == meta["splits"][s]["tokens"]
    assert not set(docs["general_train"]) & set(docs["general_val"])
    assert not set(docs["domain_train"]) & set(docs["domain_test"])


def test_a_split_reads_its_shards_as_one_array(tmp_path):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    one, many = str(tmp_path / "one"), str(tmp_path / "many")
    data.prepare(one, f"local:{gen}", f"local:{dom}", tokenizer="byte", val_frac=0.1, test_frac=0.1)
    data.prepare(many, f"local:{gen}", f"local:{dom}", tokenizer="byte", val_frac=0.1, test_frac=0.1, shard_tokens=1000)
    meta = data.load_meta(many)
    assert len(meta["splits"]["general_train"]["shards"]) == -(-meta["splits"]["general_train"]["tokens"] // 1000)
    flat, sharded = data.open_split(one, "general_train"), data.open_split(many, "general_train")
    assert len(flat) == len(sharded) and np.array_equal(np.asarray(flat), np.asarray(sharded))
    for start, stop in ((0, 10), (995, 1005), (999, 3001), (2000, 2000), (len(flat) - 5, len(flat) + 5)):
        assert np.array_equal(sharded[start:stop], np.asarray(flat)[start:stop])  # across shard boundaries too


def test_a_damaged_dataset_is_refused_in_one_line(tmp_path, tiny_data):
    folder = str(tmp_path / "ds")
    sources = data.load_meta(tiny_data)["sources"]
    data.prepare(folder, sources["general"], sources["domain"], tokenizer="byte", val_frac=0.1, test_frac=0.1,
                 shard_tokens=2000)
    meta = data.load_meta(folder)
    shards = os.path.join(folder, meta["shard_dir"])

    def refused(match, split="general_train"):
        with pytest.raises(data.DataError, match=match) as e:
            data.open_split(folder, split)
        assert "\n" not in str(e.value)
    # train and test swapped, or a shard copied from another dataset: the counts disagree with meta.json
    a, b = os.path.join(shards, "domain_train-00000.bin"), os.path.join(shards, "domain_test-00000.bin")
    os.rename(a, a + ".x"), os.rename(b, a), os.rename(a + ".x", b)
    refused("belongs to another dataset or split", "domain_train")
    os.rename(a, a + ".x"), os.rename(b, a), os.rename(a + ".x", b)
    # a shard of another tokenizer
    other = os.path.join(shards, "general_train-00001.bin")
    kept = open(other, "rb").read()
    write_tokens(other, np.zeros(meta["splits"]["general_train"]["shards"][1]["tokens"]), 50257)
    refused("another tokenizer")
    open(other, "wb").write(kept)
    # a shard cut short, and one missing
    with open(os.path.join(shards, "general_train-00002.bin"), "r+b") as f:
        f.truncate(100)
    refused("truncated")
    os.remove(os.path.join(shards, "general_train-00002.bin"))
    refused("missing: the dataset is incomplete")
    # meta.json that is not JSON, or lacks what a dataset needs
    with open(os.path.join(folder, "meta.json"), "w") as f:
        f.write('{"tokenizer": "byte", "splits": ')
    refused("is not valid JSON")
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"tokenizer": "byte", "vocab_size": 257}, f)
    refused("lacks tokenizer, vocab_size, splits, dataset_id or shard_dir")


def test_datasets_from_before_shards_are_refused_in_one_line(tmp_path, tiny_data):
    """A single .bin file per split and a meta.json without shards, as data.py wrote them before."""
    folder = tmp_path / "old"
    shutil.copytree(tiny_data, folder)
    meta = data.load_meta(str(folder))
    for s in data.SPLITS:
        write_tokens(str(folder / f"{s}.bin"), split_tokens(tiny_data, s), 257)
        meta["splits"][s] = {k: v for k, v in meta["splits"][s].items() if k != "shards"}
    del meta["shard_dir"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(data.DataError, match=r"old/meta.json lacks tokenizer, vocab_size, splits, dataset_id or "
                                             r"shard_dir: prepare it again with `python data.py --out .*old`$") as e:
        data.open_split(str(folder), "general_train")
    assert "\n" not in str(e.value)


# --- prepare: which documents go where ------------------------------------------------------------

def test_document_places_are_pinned():
    """The places decide every split and budget of every dataset: changing them changes all datasets."""
    hashes = np.array([0, 1, 2 ** 64 - 1], np.uint64)
    assert [hex(int(p)) for p in data.doc_places(hashes, 0, "general")] == \
        ["0x9f4ba80174b25a01", "0xa4a5b906d309dca", "0x9e841d3771e23aed"]
    assert [hex(int(p)) for p in data.doc_places(hashes, 1, "domain")] == \
        ["0x463313b058899e29", "0x758a9d38e170a80f", "0xf1fad55db6d4f870"]


def expected_splits(docs, holdout_frac, seed, budget=None, group="general"):
    """prepare's splits by their definition, in plain Python: drop blank documents, keep the first copy
    of each text in reading order, give each its place from the hash of its text, hold out the places
    below holdout_frac * 2^64 (or the lowest one if none is), keep training documents of lowest place until the budget is reached,
    and write each split in reading order."""
    unique = list(dict.fromkeys(d for d in docs if d.strip()))
    hashes = np.array([int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
                       for d in unique], np.uint64)
    places = [int(p) for p in data.doc_places(hashes, seed, group)]
    held = [d for d, p in zip(unique, places) if p < int(holdout_frac * 2.0 ** 64)] or [unique[np.argmin(places)]]
    train = [(p, i) for i, (d, p) in enumerate(zip(unique, places)) if d not in held]
    if budget is not None:
        kept, total = [], 0
        for p, i in sorted(train):
            if total >= budget:
                break
            kept.append((p, i))
            total += len(unique[i].encode()) + 1
        train = kept
    return [unique[i] for _, i in sorted(train, key=lambda t: t[1])], held


def test_prepare_writes_exactly_the_definition(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "UNIT_BYTES", 600)  # several units per file: copies across units too
    docs = [f"doc {i % 70} " + "x" * (5 + i % 70 * 7 % 53) for i in range(100)]  # 30 exact copies
    docs[5] = docs[17] = "   \n"  # blank: dropped
    write_jsonl(tmp_path / "a.jsonl", docs[:60])
    write_jsonl(tmp_path / "b.jsonl", docs[60:])
    out = str(tmp_path / "ds")
    data.prepare(out, f"local:{tmp_path}/*.jsonl", None, tokenizer="byte", val_frac=0.2, general_tokens=1500, seed=3)
    train, held = expected_splits(docs, 0.2, 3, budget=1500)
    assert len(train) < len(set(docs)) - 1 - len(held)  # the budget binds
    meta = data.load_meta(out)
    for split, expected in (("general_train", train), ("general_val", held)):
        assert documents_of(split_tokens(out, split), 256) == [byte_tokens(d) for d in expected]
        assert meta["splits"][split]["documents"] == len(expected)
        assert meta["splits"][split]["bytes"] == sum(len(d.encode()) for d in expected)
    assert meta["splits"]["general_train"]["tokens"] == sum(len(d.encode()) + 1 for d in train) >= 1500


def test_copies_never_straddle_splits(tmp_path):
    folder = tmp_path / "dup"
    folder.mkdir()
    for i in range(30):  # every document three times
        for copy in range(3):
            (folder / f"{i}_{copy}.txt").write_text(f"document number {i} " * 20)
    out = str(tmp_path / "ds")
    data.prepare(out, f"local:{folder}", f"local:{folder}", tokenizer="byte", val_frac=0.2, test_frac=0.2)
    meta = data.load_meta(out)
    assert meta["splits"]["general_train"]["documents"] + meta["splits"]["general_val"]["documents"] == 30
    train, val = (documents_of(split_tokens(out, s), 256) for s in ("general_train", "general_val"))
    assert len(set(train)) == len(train) and not set(train) & set(val)


def test_a_budget_samples_the_whole_source_nests_and_leaves_the_test_split_alone(tmp_path):
    """Two collections, one file each: a budget takes from both (not the first file's documents), a
    smaller budget's split is part of a larger one's, and the held-out split never changes."""
    dom = tmp_path / "dom"
    dom.mkdir()
    write_jsonl(dom / "a.jsonl", [f"A {i} " + "a" * (i % 17) for i in range(150)])
    write_jsonl(dom / "b.jsonl", [f"B {i} " + "b" * (i % 13) for i in range(150)])
    gen = write_jsonl(tmp_path / "gen.jsonl", [f"general {i} " * 5 for i in range(40)])
    splits = {}
    for budget in (None, 1500, 600):
        out = str(tmp_path / f"ds{budget}")
        data.prepare(out, f"local:{gen}", f"local:{dom}", tokenizer="byte", test_frac=0.1, domain_tokens=budget)
        splits[budget] = {s: documents_of(split_tokens(out, s), 256) for s in ("domain_train", "domain_test")}
    assert splits[None]["domain_test"] == splits[1500]["domain_test"] == splits[600]["domain_test"]
    assert set(splits[600]["domain_train"]) < set(splits[1500]["domain_train"]) < set(splits[None]["domain_train"])
    for budget in (1500, 600):
        kept = splits[budget]["domain_train"]
        assert sum(len(d) // 2 + 1 for d in kept) >= budget  # uint16 bytes -> tokens
        from_a = sum(d.startswith(byte_tokens("A ")) for d in kept)
        assert 0.3 < from_a / len(kept) < 0.7  # both collections, about equally


def test_a_split_short_of_its_budget_is_an_error_unless_allowed(tmp_path):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    out = str(tmp_path / "ds")
    with pytest.raises(data.DataError, match=r"domain_train: .* holds [\d,]+ training tokens .* short of the "
                                             r"1,000,000 asked for: .* --allow_short"):
        data.prepare(out, f"local:{gen}", f"local:{dom}", tokenizer="byte", domain_tokens=10 ** 6)
    assert not os.path.exists(os.path.join(out, "meta.json"))
    meta = data.prepare(out, f"local:{gen}", f"local:{dom}", tokenizer="byte", domain_tokens=10 ** 6, allow_short=True)
    full = data.prepare(str(tmp_path / "full"), f"local:{gen}", f"local:{dom}", tokenizer="byte")
    assert meta["splits"]["domain_train"]["sha256"] == full["splits"]["domain_train"]["sha256"]


def test_too_few_or_no_documents_are_errors(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "a.txt").write_text("only one document")
    with pytest.raises(data.DataError, match="too few"):
        data.prepare(str(tmp_path / "ds"), f"local:{folder}", f"local:{folder}", tokenizer="byte")
    (folder / "a.txt").write_text("  \n\n ")
    with pytest.raises(data.DataError, match="yielded no documents"):
        data.prepare(str(tmp_path / "ds"), f"local:{folder}", None, tokenizer="byte")


# --- prepare: parallel, resumable, never half-replaced ------------------------------------------------

def test_workers_units_and_shards_do_not_change_the_tokens(tmp_path, monkeypatch):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    args = (f"local:{gen}", f"local:{dom}")
    kwargs = dict(tokenizer="byte", val_frac=0.1, test_frac=0.1, domain_tokens=3000, shard_tokens=4000)
    one = data.prepare(str(tmp_path / "one"), *args, workers=1, **kwargs)
    monkeypatch.setattr(corpora, "UNIT_BYTES", 2000)  # ~40 units
    two = data.prepare(str(tmp_path / "two"), *args, workers=2, **kwargs)
    assert one == two
    assert folder_bytes(str(tmp_path / "one")) == folder_bytes(str(tmp_path / "two"))


KILLER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import corpora, data, settings
corpora.UNIT_BYTES = 2000
point, n, calls = sys.argv[2], int(sys.argv[3]), [0]

def killing(original, applies=lambda *args: True):
    def wrapper(*args, **kwargs):
        if applies(*args):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper

if point == "inside a unit":
    data.TokenWriter.append = killing(data.TokenWriter.append)
if point == "before a unit's index":
    settings.atomic_write = killing(settings.atomic_write, lambda path, *_: path.endswith(".npz"))
if point == "between shards":
    data.TokenWriter.close = killing(data.TokenWriter.close, lambda writer: ".assemble" in writer.path)
if point == "before meta.json":
    settings.atomic_write = killing(settings.atomic_write, lambda path, *_: path.endswith("meta.json"))
data.prepare(sys.argv[4], "local:" + sys.argv[5], "local:" + sys.argv[6], tokenizer="byte", val_frac=0.1,
             test_frac=0.1, domain_tokens=3000, workers=1, shard_tokens=4000)
"""


@pytest.mark.parametrize("point,n,finished", [("inside a unit", 9, 8), ("before a unit's index", 20, 19),
                                              ("between shards", 4, "all"), ("before meta.json", 1, "all")])
def test_a_prepare_killed_anywhere_resumes_to_the_same_bytes(tmp_path, monkeypatch, point, n, finished):
    """kill -9 at an exact point of a preparation (in a subprocess), then the same call again: it redoes
    only the unfinished units, and the dataset is byte for byte the one an uninterrupted preparation
    makes, with nothing else left in the folder."""
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    monkeypatch.setattr(corpora, "UNIT_BYTES", 2000)
    kwargs = dict(tokenizer="byte", val_frac=0.1, test_frac=0.1, domain_tokens=3000, workers=1, shard_tokens=4000)
    units = []
    monkeypatch.setattr(data, "tokenize_unit", lambda task, tokenize_unit=data.tokenize_unit:
                        units.append(task) or tokenize_unit(task))
    data.prepare(str(tmp_path / "whole"), f"local:{gen}", f"local:{dom}", **kwargs)
    total, units[:] = len(units), []
    out = str(tmp_path / "killed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    killed = subprocess.run([sys.executable, "-c", KILLER, root, point, str(n), out, gen, dom], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not os.path.exists(os.path.join(out, "meta.json"))
    data.prepare(out, f"local:{gen}", f"local:{dom}", **kwargs)
    assert len(units) == total - (total if finished == "all" else finished)
    assert folder_bytes(out) == folder_bytes(str(tmp_path / "whole"))


def test_the_preparation_benchmark_prints_each_goal_with_a_verdict():
    """scripts/bench.py --prepare at a tiny size (one unit, so two workers cannot scale): it must run
    data.py end to end and judge all three goals, the scaling beside the machine's own ceiling."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "scripts", "bench.py"), "--prepare", "--mb", "2",
                             "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    goals = [line for line in result.stdout.splitlines() if line.startswith(("per worker", "peak memory, corpus"))]
    scaling = next(line for line in result.stdout.splitlines() if line.startswith("1 -> 2 workers"))
    assert len(goals) == 2 and all(" ok" in line or " MISSED" in line for line in goals), result.stdout
    assert "MISSED (this machine's CPUs allow" in scaling, scaling  # one unit: 1.0x


def test_a_new_dataset_replaces_the_old_one_only_when_complete(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    before = folder_bytes(folder)
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("a domain with a single document")
    meta = data.load_meta(folder)
    with pytest.raises(data.DataError, match="too few"):  # fails after the general units are tokenized
        data.prepare(folder, meta["sources"]["general"], f"local:{one}", tokenizer="byte")
    assert folder_bytes(folder, skip=(".work",)) == before  # the dataset as it was; the work done is kept
    assert os.listdir(os.path.join(folder, ".work"))


def test_prepare_removes_what_earlier_preparations_left(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    for name in (".work/general-0123456789abcdef/000000.bin.tmp9", ".assemble123/general_train-00000.bin",
                 "shards-0000000000000000/general_train-00000.bin", "meta.json.tmp123"):
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        open(os.path.join(folder, name), "wb").write(b"junk")
    open(os.path.join(folder, "notes.txt"), "w").write("the user's own file")
    meta = data.load_meta(folder)
    data.prepare(folder, meta["sources"]["general"], meta["sources"]["domain"], tokenizer="byte", val_frac=0.1,
                 test_frac=0.1)
    assert sorted(os.listdir(folder)) == sorted([settings.LOCK_NAME, "meta.json", meta["shard_dir"], "notes.txt"])
    assert data.load_meta(folder)["dataset_id"] == meta["dataset_id"]


def test_prepare_checks_its_arguments_before_writing_anything(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    before = folder_bytes(folder)
    general = data.load_meta(folder)["sources"]["general"]
    for kwargs, message in ((dict(val_frac=0), r"--val_frac 0 is outside \(0, 1\)"),
                            (dict(test_frac=1), r"--test_frac 1 is outside \(0, 1\)"),
                            (dict(domain_tokens=0), "--domain_tokens 0: a token budget must be positive"),
                            (dict(seed=-1), "seed -1: use a non-negative integer"),
                            (dict(workers=-2), "--workers -2: use at least 1"),
                            (dict(part="2/2"), "--part 2/2: write it as i/N with 0 <= i < N"),
                            (dict(part="-1/2"), "--part -1/2: write it as i/N with 0 <= i < N"),
                            (dict(part="half"), "--part half: write it as i/N"),
                            (dict(domain="abcc"), "unknown source 'abcc'")):  # a typo, found before any work
        with pytest.raises(data.DataError, match=message):
            data.prepare(folder, general, **{"domain": general, "tokenizer": "byte", **kwargs})
        assert folder_bytes(folder) == before
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        data.prepare(str(tmp_path / "file"), general, None, tokenizer="byte")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_parts_on_many_machines_make_the_same_dataset(tmp_path, monkeypatch):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    monkeypatch.setattr(corpora, "UNIT_BYTES", 2000)
    args = (f"local:{gen}", f"local:{dom}")
    kwargs = dict(tokenizer="byte", val_frac=0.1, test_frac=0.1, workers=1)
    data.prepare(str(tmp_path / "whole"), *args, **kwargs)
    out = str(tmp_path / "parts")
    assert data.prepare(out, *args, part="0/2", **kwargs) is None
    assert not os.path.exists(os.path.join(out, "meta.json"))
    done = sorted(name for work in os.listdir(os.path.join(out, ".work"))
                  for name in os.listdir(os.path.join(out, ".work", work)) if name.endswith(".npz"))
    assert done and all(int(name[:6]) % 2 == 0 for name in done)  # every other unit
    assert data.prepare(out, *args, part="1/2", **kwargs) is None
    tokenized = []
    monkeypatch.setattr(data, "tokenize", lambda tasks, workers: tokenized.extend(tasks))
    data.prepare(out, *args, **kwargs)  # the final step: only assembles
    assert tokenized == []
    assert folder_bytes(out) == folder_bytes(str(tmp_path / "whole"))


def test_a_full_disk_is_one_line_and_keeps_the_finished_units(tmp_path, monkeypatch):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path))
    monkeypatch.setattr(corpora, "UNIT_BYTES", 2000)
    kwargs = dict(tokenizer="byte", val_frac=0.1, test_frac=0.1, workers=1)
    whole = data.prepare(str(tmp_path / "whole"), f"local:{gen}", f"local:{dom}", **kwargs)
    append, calls = data.TokenWriter.append, [0]

    def fills_the_disk(self, tokens):  # the 5th write finds the disk full, as a small filesystem would
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, tokens)
    monkeypatch.setattr(data.TokenWriter, "append", fills_the_disk)
    out = str(tmp_path / "ds")
    with pytest.raises(data.DataError, match="is full: free some space and run the same command again") as e:
        data.prepare(out, f"local:{gen}", f"local:{dom}", **kwargs)
    assert "\n" not in str(e.value)
    work = os.path.join(out, ".work", [w for w in os.listdir(os.path.join(out, ".work")) if w.startswith("general")][0])
    assert not [name for name in os.listdir(work) if ".tmp" in name]  # the unit being written is gone
    assert len([n for n in os.listdir(work) if n.endswith(".npz")]) == 4  # the units before the full disk
    monkeypatch.setattr(data.TokenWriter, "append", append)
    assert data.prepare(out, f"local:{gen}", f"local:{dom}", **kwargs) == whole


# --- the mixture ------------------------------------------------------------------------------------

# The batches of the Mixture as it was before shards (commit 097957d), on the synthetic dataset below:
# sha256 over get_batch(step, part, 2) for steps 0-199, parts 0 and 1 (2.6 domain and 2.2 general epochs).
BATCHES_BEFORE_SHARDS = "18e68406923aa8714eeceb0f1c824b2b9307ea7137ff8e0c693318790f49621d"


def synthetic_dataset(folder, shard_tokens):
    """Random byte tokens in the four splits, as shards of shard_tokens tokens."""
    meta = {"tokenizer": "byte", "vocab_size": 257, "eot_token": 256, "splits": {}, "dataset_id": "synthetic",
            "shard_dir": "shards-synthetic"}
    os.makedirs(os.path.join(folder, meta["shard_dir"]))
    rng = np.random.default_rng(0)
    for split, n in (("general_train", 8000), ("general_val", 2000), ("domain_train", 3000), ("domain_test", 1000)):
        writer = data.SplitWriter(os.path.join(folder, meta["shard_dir"]), split, 257, shard_tokens)
        writer.append(rng.integers(0, 257, n))
        meta["splits"][split] = writer.close()
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize("shard_tokens", [10 ** 8, 700])
def test_the_mixture_draws_the_batches_it_drew_before_shards(tmp_path, shard_tokens):
    """One shard per split (as one file per split was before shards), or many (windows straddling
    shard boundaries): the same batches as the Mixture drew before splits were sharded."""
    folder = str(tmp_path / "ds")
    synthetic_dataset(folder, shard_tokens)
    mix = data.Mixture(folder, 0.3, 8, 16, seed=5)
    fingerprint = hashlib.sha256()
    for step in range(200):
        for part in range(2):
            kinds = [kind for kind, _ in mix.batch_windows(step)[part * 4:(part + 1) * 4]]
            is_domain = torch.tensor([kind == "domain" for kind in kinds])  # get_batch's third value, once
            for tensor in (*mix.get_batch(step, part, 2), is_domain):
                fingerprint.update(tensor.numpy().tobytes())
    assert fingerprint.hexdigest() == BATCHES_BEFORE_SHARDS
    assert mix.position(200) == {"general": 1120, "domain": 480}


@pytest.mark.parametrize("delta", [0.0, 0.001, 0.05, 0.3, 1.0])
def test_realized_fraction_tracks_delta_at_every_step(tiny_data, delta):
    batch = 16
    mix = data.Mixture(tiny_data, delta, batch, 32, seed=3)
    total = 0
    for step in range(300):
        n_dom = sum(kind == "domain" for kind, _ in mix.batch_windows(step))
        total += n_dom
        assert n_dom in (np.floor(batch * delta), np.ceil(batch * delta))  # within each step
        assert abs(total - (step + 1) * batch * delta) <= 0.5 + 1e-9  # cumulatively, at every step


def test_domain_epochs_are_exact_repeats(tiny_data):
    mix = data.Mixture(tiny_data, 0.25, 16, 32, seed=1)
    n = mix.windows["domain"]
    seen = [w for step in range(400) for kind, w in mix.batch_windows(step) if kind == "domain"]
    full_epochs = len(seen) // n
    assert full_epochs >= 3
    for e in range(full_epochs):  # each epoch is a permutation: every window exactly once
        assert sorted(seen[e * n:(e + 1) * n]) == list(range(n))
    assert seen[:n] != seen[n:2 * n]  # and a fresh one each epoch
    assert mix.domain_epochs(400) == pytest.approx(len(seen) / n)
    meta = data.load_meta(tiny_data)
    tokens = 400 * 16 * 32  # E = T * delta / |D_dom|
    assert mix.domain_epochs(400) == pytest.approx(tokens * 0.25 / meta["splits"]["domain_train"]["tokens"], rel=0.05)


def test_general_data_is_drawn_without_replacement(tiny_data):
    mix = data.Mixture(tiny_data, 0.1, 16, 32, seed=0)
    n = mix.windows["general"]
    seen = []
    step = 0
    while len(seen) < n:
        seen += [w for kind, w in mix.batch_windows(step) if kind == "general"]
        step += 1
    assert len(set(seen[:n])) == n


def test_batches_match_windows_and_targets_shift(tiny_data):
    mix = data.Mixture(tiny_data, 0.5, 8, 32, seed=0)
    x, y = mix.get_batch(5)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, (kind, w) in enumerate(mix.batch_windows(5)):
        split = mix.splits[kind]
        assert torch.equal(x[row], torch.from_numpy(split[w * 32:w * 32 + 32].astype(np.int64)))


def test_ranks_and_micro_batches_partition_the_global_batch(tiny_data):
    mix = data.Mixture(tiny_data, 0.2, 16, 32, seed=0)
    for step in range(20):
        full = mix.get_batch(step)[0]
        parts = [mix.get_batch(step, part, 4)[0] for part in range(4)]  # e.g. 2 ranks x 2 micro-steps
        assert torch.equal(torch.cat(parts), full)
        keys = [(k, w) for k, w in mix.batch_windows(step)]
        assert len(set(keys)) == len(keys)  # no window twice in a step (this one straddles no epoch)


def test_mixture_is_deterministic_and_resumable(tiny_data):
    a = data.Mixture(tiny_data, 0.1, 16, 32, seed=7)
    b = data.Mixture(tiny_data, 0.1, 16, 32, seed=7, general_start=a.state_dict()["general_start"])
    assert all(torch.equal(a.get_batch(s)[0], b.get_batch(s)[0]) for s in (0, 17, 123))
    c = data.Mixture(tiny_data, 0.1, 16, 32, seed=8)
    assert not torch.equal(a.get_batch(0)[0], c.get_batch(0)[0])
    # continuing from a position (SCPT): the new mixture starts where the old one stopped
    pos = a.position(50)
    d = data.Mixture(tiny_data, 0.1, 16, 32, seed=7, general_start=pos["general"])
    drawn = [w for kind, w in d.batch_windows(0) if kind == "general"]
    assert drawn == [a.window("general", pos["general"] + i) for i in range(len(drawn))]
    assert a.position(51)["general"] > pos["general"]  # ... which is where `a` itself would go next
    # ... counting the run's steps and tokens on from the parent's, while drawing as a new mixture
    e = data.Mixture(tiny_data, 0.1, 16, 32, seed=7, general_start=pos["general"], first_step=50, first_tokens=9000)
    assert all(torch.equal(e.get_batch(50 + s)[0], d.get_batch(s)[0]) for s in (0, 3, 40))
    assert e.position(53) == d.position(3) and e.domain_epochs(90) == d.domain_epochs(40)
    assert e.tokens(50) == 9000 and e.tokens(53) == 9000 + 3 * 16 * 32


def test_mixture_errors(tiny_data):
    for bad in (-0.1, 1.5):
        with pytest.raises(data.DataError, match="outside"):
            data.Mixture(tiny_data, bad, 8, 32)
    with pytest.raises(data.DataError, match="fewer than"):
        data.Mixture(tiny_data, 1.0, 100000, 32)
    with pytest.raises(data.DataError, match="non-negative"):
        data.Mixture(tiny_data, 0.1, 8, 32, seed=-1)


def test_meta_records_sources_and_hashes(tiny_data):
    meta = json.load(open(os.path.join(tiny_data, "meta.json")))
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 257
    assert meta["sources"]["domain"].startswith("local:")
    assert len(meta["dataset_id"]) == 16
    for s in data.SPLITS:
        assert meta["splits"][s]["bytes"] > 0 and len(meta["splits"][s]["sha256"]) == 64
