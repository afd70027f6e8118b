"""Shared fixtures: a tiny byte-tokenized dataset made from synthetic documents (no network)."""
import json
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def write_corpus(folder, n_general=120, n_domain=80, seed=0):
    """General 'prose' as .txt files and ABC-like 'tunes' as a .jsonl file."""
    rng = random.Random(seed)
    gen, dom = os.path.join(folder, "general"), os.path.join(folder, "domain")
    os.makedirs(gen, exist_ok=True)
    os.makedirs(dom, exist_ok=True)
    for i in range(n_general):
        words = [rng.choice(WORDS) for _ in range(rng.randint(80, 200))]
        with open(os.path.join(gen, f"doc{i:04d}.txt"), "w") as f:
            f.write(f"Document {i}. " + " ".join(words) + ".")
    with open(os.path.join(dom, "tunes.jsonl"), "w") as f:
        for i in range(n_domain):
            bars = "|".join("".join(rng.choice("ABCDEFGabcdefg") + rng.choice(["", "2", "/2"]) for _ in range(4))
                            for _ in range(rng.randint(8, 24)))
            f.write(json.dumps({"text": f"X:{i}\nT:Tune {i}\nK:{rng.choice('DGAC')}\n{bars}|]"}) + "\n")
    return gen, dom


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared byte-level dataset folder: general_train/val and domain_train/test."""
    root = tmp_path_factory.mktemp("corpus")
    gen, dom = write_corpus(str(root))
    out = str(root / "ds")
    data.prepare(out, f"local:{gen}", f"local:{dom}", tokenizer="byte", val_frac=0.1, test_frac=0.1, seed=0)
    return out
