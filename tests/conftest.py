"""Shared fixtures: a tiny byte-tokenized dataset made from synthetic documents (no network)."""
import json
import os
import random
import subprocess
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


def one_process_and_two_ranks(main, script, args, tmp_path, port):
    """Run a script's `main(args)` in this process and the script under torchrun with 2 gloo ranks;
    "OUT" in args stands for the output folder. Returns the two output folders."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    main([a if a != "OUT" else one for a in args])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a 2-core machine: one thread each
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           os.path.join(root, script)] + [a if a != "OUT" else two for a in args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return one, two
