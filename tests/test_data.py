"""Token files, tokenizers, document splits and the mixture: the contracts the rest relies on."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import data


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


def test_token_file_roundtrip_and_dtype(tmp_path):
    for vocab, dtype in ((257, np.uint16), (70000, np.uint32)):
        tokens = np.random.default_rng(0).integers(0, vocab, 1000)
        path = str(tmp_path / f"t{vocab}.bin")
        data.write_tokens(path, tokens, vocab)
        back = data.read_tokens(path, vocab)
        assert back.dtype == dtype and np.array_equal(back, tokens)


def test_token_file_errors(tmp_path):
    path = str(tmp_path / "t.bin")
    data.write_tokens(path, np.arange(100), 257)
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
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_tokens(str(tmp_path / "missing.bin"))
    with pytest.raises(data.DataError, match="vocab size"):
        data.write_tokens(str(tmp_path / "bad.bin"), np.array([300]), 257)


def documents_of(path, eot):
    tokens = np.asarray(data.read_tokens(path))
    cuts = np.flatnonzero(tokens == eot).tolist() + [len(tokens)]
    return [tokens[a + 1:b].tobytes() for a, b in zip(cuts[:-1], cuts[1:])]


def test_splits_are_document_disjoint_and_meta_consistent(tiny_data):
    meta = data.load_meta(tiny_data)
    docs = {s: documents_of(os.path.join(tiny_data, f"{s}.bin"), meta["eot_token"]) for s in data.SPLITS}
    for s in data.SPLITS:
        assert len(docs[s]) == meta["splits"][s]["documents"] > 0
        assert np.asarray(data.read_tokens(os.path.join(tiny_data, f"{s}.bin")))[0] == meta["eot_token"]
    assert not set(docs["general_train"]) & set(docs["general_val"])
    assert not set(docs["domain_train"]) & set(docs["domain_test"])
    assert len(docs["domain_test"]) == round(0.1 * 80)


def test_duplicates_never_straddle_splits(tmp_path):
    folder = tmp_path / "dup"
    folder.mkdir()
    for i in range(30):  # every document three times
        for copy in range(3):
            (folder / f"{i}_{copy}.txt").write_text(f"document number {i} " * 20)
    out = str(tmp_path / "ds")
    data.prepare(out, f"local:{folder}", f"local:{folder}", tokenizer="byte", val_frac=0.2, test_frac=0.2)
    meta = data.load_meta(out)
    assert meta["splits"]["general_train"]["documents"] + meta["splits"]["general_val"]["documents"] == 30


def test_domain_budget_keeps_test_split_fixed(tmp_path):
    from conftest import write_corpus
    gen, dom = write_corpus(str(tmp_path), n_general=30, n_domain=60)
    full, small = str(tmp_path / "full"), str(tmp_path / "small")
    data.prepare(full, f"local:{gen}", f"local:{dom}", tokenizer="byte", test_frac=0.1)
    data.prepare(small, f"local:{gen}", f"local:{dom}", tokenizer="byte", test_frac=0.1, domain_tokens=1000)
    m_full, m_small = data.load_meta(full), data.load_meta(small)
    assert m_small["splits"]["domain_test"]["sha256"] == m_full["splits"]["domain_test"]["sha256"]
    assert 1000 <= m_small["splits"]["domain_train"]["tokens"] < m_full["splits"]["domain_train"]["tokens"]


def test_too_small_domain_for_split_is_an_error(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "a.txt").write_text("only one document")
    with pytest.raises(data.DataError, match="too few"):
        data.prepare(str(tmp_path / "ds"), f"local:{folder}", f"local:{folder}", tokenizer="byte")


def test_prepare_writes_exactly_the_in_memory_definition(tmp_path):
    """prepare streams documents through a scratch file; its output must equal the plain definition:
    drop blank documents, keep the first copy of each, shuffle with the seed, hold out the first
    share, and keep training documents until the one that reaches the token budget."""
    docs = [f"doc {i % 70} " + "x" * (5 + i % 70 * 7 % 53) for i in range(100)]  # 30 exact copies
    docs[5] = docs[17] = "   \n"  # blank: dropped
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = str(tmp_path / "ds")
    data.prepare(out, f"local:{path}", None, tokenizer="byte", val_frac=0.2, general_tokens=1500, seed=3)

    unique = list(dict.fromkeys(d for d in docs if d.strip()))
    order = np.random.default_rng([3, int.from_bytes(b"general", "little")]).permutation(len(unique))
    n_val = round(0.2 * len(unique))
    val, train = [unique[i] for i in order[:n_val]], [unique[i] for i in order[n_val:]]
    lengths = np.cumsum([len(d.encode()) + 1 for d in train])
    train = train[:int(np.searchsorted(lengths, 1500)) + 1]
    assert len(train) < len(unique) - n_val  # the budget binds
    eot = data.get_tokenizer("byte").eot_token
    for split, expected in (("general_train", train), ("general_val", val)):
        byte_tokens = [np.frombuffer(d.encode(), np.uint8).astype(np.uint16).tobytes() for d in expected]
        assert documents_of(os.path.join(out, f"{split}.bin"), eot) == byte_tokens
        assert data.load_meta(out)["splits"][split]["documents"] == len(expected)
    assert data.load_meta(out)["splits"]["general_train"]["tokens"] == lengths[len(train) - 1] >= 1500


def test_failed_prepare_leaves_the_dataset_as_it_was(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("a domain with a single document")
    meta = data.load_meta(folder)
    with pytest.raises(data.DataError, match="too few"):  # fails after the general splits are written
        data.prepare(folder, meta["sources"]["general"], f"local:{one}", tokenizer="byte")
    after = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    assert after == before  # same files, same bytes, no scratch or partial files left behind


def test_prepare_removes_what_a_killed_prepare_left(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    stale = [".general-documents.tmp123", "general_train.bin.partial", "domain_test.bin.tmp456"]
    for name in stale:
        open(os.path.join(folder, name), "wb").write(b"junk")
    meta = data.load_meta(folder)
    data.prepare(folder, meta["sources"]["general"], meta["sources"]["domain"], tokenizer="byte", val_frac=0.1,
                 test_frac=0.1)
    assert sorted(os.listdir(folder)) == sorted([f"{s}.bin" for s in data.SPLITS] + ["meta.json"])
    assert data.load_meta(folder)["dataset_id"] == meta["dataset_id"]


def test_prepare_checks_its_arguments_before_writing_anything(tiny_data, tmp_path):
    folder = str(tmp_path / "ds")
    shutil.copytree(tiny_data, folder)
    before = {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)}
    general = data.load_meta(folder)["sources"]["general"]
    for kwargs, message in ((dict(val_frac=0), r"--val_frac 0 is outside \(0, 1\)"),
                            (dict(test_frac=1), r"--test_frac 1 is outside \(0, 1\)"),
                            (dict(domain_tokens=0), "--domain_tokens 0: a token budget must be positive"),
                            (dict(seed=-1), "seed -1: use a non-negative integer"),
                            (dict(domain="abcc"), "unknown source 'abcc'")):  # a typo, found before any work
        with pytest.raises(data.DataError, match=message):
            data.prepare(folder, general, **{"domain": general, "tokenizer": "byte", **kwargs})
        assert {f: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder)} == before


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
    x, y, is_domain = mix.get_batch(5)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row, (kind, w) in enumerate(mix.batch_windows(5)):
        split = mix.splits[kind]
        assert torch.equal(x[row], torch.from_numpy(split[w * 32:w * 32 + 32].astype(np.int64)))
        assert bool(is_domain[row]) == (kind == "domain")


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
    b = data.Mixture(tiny_data, 0.1, 16, 32, seed=7, **{k: v for k, v in a.state_dict().items()
                                                      if k in ("general_start", "domain_start")})
    assert all(torch.equal(a.get_batch(s)[0], b.get_batch(s)[0]) for s in (0, 17, 123))
    c = data.Mixture(tiny_data, 0.1, 16, 32, seed=8)
    assert not torch.equal(a.get_batch(0)[0], c.get_batch(0)[0])
    # continuing from a position (SCPT): the new mixture starts where the old one stopped
    pos = a.position(50)
    d = data.Mixture(tiny_data, 0.1, 16, 32, seed=7, general_start=pos["general"], domain_start=pos["domain"])
    drawn = [w for kind, w in d.batch_windows(0) if kind == "general"]
    assert drawn == [a._window("general", pos["general"] + i) for i in range(len(drawn))]
    assert a.position(51)["general"] > pos["general"]  # ... which is where `a` itself would go next


def test_mixture_errors(tiny_data):
    for bad in (-0.1, 1.5):
        with pytest.raises(data.DataError, match="outside"):
            data.Mixture(tiny_data, bad, 8, 32)
    with pytest.raises(data.DataError, match="fewer than"):
        data.Mixture(tiny_data, 1.0, 100000, 32)
    with pytest.raises(data.DataError, match="vocab_size"):
        data.Mixture(tiny_data, 0.1, 8, 32, vocab_size=50257)
    with pytest.raises(data.DataError, match="non-negative"):
        data.Mixture(tiny_data, 0.1, 8, 32, seed=-1)


def test_meta_records_sources_and_hashes(tiny_data):
    meta = json.load(open(os.path.join(tiny_data, "meta.json")))
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 257
    assert meta["sources"]["domain"].startswith("local:")
    assert len(meta["dataset_id"]) == 16
    for s in data.SPLITS:
        assert meta["splits"][s]["bytes"] > 0 and len(meta["splits"][s]["sha256"]) == 64
