"""Export to Hugging Face: the folder that scripts/export_hf.py writes, loaded by the installed
transformers in a separate process outside this repository (as lm-eval and vLLM load it), computes
model.py's logits (OLMo for LayerNorm, Llama for RMSNorm, tied or untied), its GPT-2 tokenizer gives
tiktoken's ids, and a byte-level vocabulary, an existing folder or a failed write is refused in one
line with nothing left behind. transformers is never imported in this process: in a process with
this repository on its path, its own `kernels` import finds our kernels/ folder (README, export)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import run_folder
import train
from model import GPT, config_from_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import export_hf  # noqa: E402

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is optional: .ci/run installs it")
TEXT = "X:1\nT:The Kesh Jig\nK:G\n|:GAG GAB|ABA ABd| Hello, world!  It's 2026 -- naïve café 日本.\n\n\tend  "

# What lm-eval or vLLM do with the folder: run in a fresh interpreter (-I: neither the working folder
# nor PYTHONPATH on the path) from the folder's parent, so that nothing of this repository is importable.
LOADER = """
import json, sys
import numpy as np, torch, transformers
folder, tokens = sys.argv[1], np.load(sys.argv[2])
hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
with torch.no_grad():
    np.save(sys.argv[3], hf(torch.from_numpy(tokens)).logits.numpy())
out = {"architecture": type(hf).__name__, "tied": hf.config.tie_word_embeddings}
if len(sys.argv) > 5:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(sys.argv[5])["input_ids"]
    out.update(ids=ids, decoded=tokenizer.decode(ids), eos=tokenizer.eos_token_id)
with open(sys.argv[4], "w") as f:
    json.dump(out, f)
"""


def checkpoint(path, norm="layernorm", tied=True, vocab_size=257):
    """A checkpoint of a small random GPT whose weights are large enough to make confident logits."""
    torch.manual_seed(0)
    model = GPT(config_from_preset("cpu-tiny", vocab_size=vocab_size, norm=norm, n_layer=3))
    if not tied:
        model.untie()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10)
    run_folder.save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config_dict(), "config": {},
                                 "step": 0, "tokens": 0, "general_position": 0, "dataset_id": "none"})
    return model


def load_elsewhere(folder, tokens, tmp_path, text=None) -> tuple[np.ndarray, dict]:
    """The exported folder loaded by transformers in a separate process: its logits and what it says."""
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    args = [str(folder), str(tmp_path / "tokens.npy"), str(tmp_path / "logits.npy"), str(tmp_path / "out.json")]
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, *args, *([text] if text else [])],
                          cwd=os.path.dirname(folder), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "out.json") as f:
        return np.load(tmp_path / "logits.npy"), json.load(f)


@needs_transformers
@pytest.mark.parametrize("norm, tied, architecture", [("layernorm", True, "OlmoForCausalLM"),
                                                      ("layernorm", False, "OlmoForCausalLM"),
                                                      ("rmsnorm", True, "LlamaForCausalLM")])
def test_the_export_computes_the_same_logits(tmp_path, norm, tied, architecture):
    model = checkpoint(str(tmp_path / "ckpt.pt"), norm, tied)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), "--no_tokenizer"])
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    tokens = torch.randint(0, 257, (2, 64), generator=torch.Generator().manual_seed(1))
    theirs, said = load_elsewhere(str(tmp_path / "hf"), tokens, tmp_path)
    assert said == {"architecture": architecture, "tied": tied}
    with torch.no_grad():
        ours = model(tokens)[0].numpy()
    assert np.abs(ours).max() > 1  # confident logits, so that a wrong layout could not pass
    assert np.abs(ours - theirs[..., :257]).max() < 1e-4


@needs_transformers
def test_a_gpt2_model_and_its_tokenizer_load_elsewhere(tmp_path):
    model = checkpoint(str(tmp_path / "ckpt.pt"), vocab_size=50257)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")])
    enc = data.get_tokenizer("gpt2")
    tokens = torch.tensor([enc.encode_ordinary(TEXT)])
    theirs, said = load_elsewhere(str(tmp_path / "hf"), tokens, tmp_path, TEXT)
    with torch.no_grad():
        ours = model(tokens)[0].numpy()
    assert np.abs(ours - theirs[..., :50257]).max() < 1e-4
    assert said["ids"] == enc.encode_ordinary(TEXT) and said["decoded"] == TEXT
    assert said["eos"] == enc.eot_token == 50256


def test_the_tokenizer_reproduces_tiktoken_without_transformers(tmp_path):
    """tokenizer.json read by the `tokenizers` library alone: tiktoken's ids on text of every kind."""
    tokenizers = pytest.importorskip("tokenizers")
    export_hf.write_tokenizer("gpt2", 64, str(tmp_path))
    tokenizer, enc = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")), data.get_tokenizer("gpt2")
    for text in (TEXT, "  leading spaces, 'quotes' and it's, we'll, I'VE", "1234567 3.14159 $$$ ===>", "😀 ελληνικά"):
        assert tokenizer.encode(text).ids == enc.encode_ordinary(text)
        assert tokenizer.decode(enc.encode_ordinary(text)) == text
    assert tokenizer.token_to_id(data.EOT) == 50256 and tokenizer.get_vocab_size() == 50257


def test_bad_exports_are_refused_in_one_line(tmp_path, monkeypatch):
    checkpoint(str(tmp_path / "ckpt.pt"))
    script = os.path.join(ROOT, "scripts", "export_hf.py")
    done = subprocess.run([sys.executable, script, str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "257-token (byte-level) vocabulary, which has no Hugging Face tokenizer: add --no_tokenizer" in done.stderr
    pytest.importorskip("safetensors")  # what follows writes exports (requirements.txt leaves it optional)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "other"), "--no_tokenizer"])  # a model already there
    before = {name: os.path.getmtime(tmp_path / "other" / name) for name in os.listdir(tmp_path / "other")}
    for taken in ("other", "empty"):
        os.makedirs(tmp_path / taken, exist_ok=True)
        with pytest.raises(train.TrainError, match="exists: give a new folder"):
            export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / taken), "--no_tokenizer"])
    assert {name: os.path.getmtime(tmp_path / "other" / name) for name in os.listdir(tmp_path / "other")} == before
    assert os.listdir(tmp_path / "empty") == []

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export_hf.json, "dump", full_disk)  # config.json is the first file written
    with pytest.raises(OSError):
        export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), "--no_tokenizer"])
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "empty", "other"]  # no half export, no temporary folder
