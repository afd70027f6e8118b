"""Export to Hugging Face transformers: the exported model computes model.py's logits (OLMo for
LayerNorm, Llama for RMSNorm, tied or untied), the GPT-2 tokenizer gives tiktoken's ids, and a
byte-level vocabulary or an existing folder is refused in one line."""
import os
import subprocess
import sys

import pytest
import torch

import data
import run_folder
import train
from model import GPT, config_from_preset

transformers = pytest.importorskip("transformers")  # .ci/run installs it; the project does not need it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import export_hf  # noqa: E402


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
                                 "step": 0, "tokens": 0, "general_position": 0})
    return model


@pytest.mark.parametrize("norm, tied, architecture", [("layernorm", True, "OlmoForCausalLM"),
                                                      ("layernorm", False, "OlmoForCausalLM"),
                                                      ("rmsnorm", True, "LlamaForCausalLM")])
def test_the_export_computes_the_same_logits(tmp_path, norm, tied, architecture):
    model = checkpoint(str(tmp_path / "ckpt.pt"), norm, tied)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf"), "--no_tokenizer"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    assert type(hf).__name__ == architecture and hf.config.tie_word_embeddings == tied
    assert os.path.exists(tmp_path / "hf" / "model.safetensors")
    tokens = torch.randint(0, 257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens)[0], hf(tokens).logits[..., :257]
    assert ours.abs().max() > 1  # confident logits, so that a wrong layout could not pass
    assert (ours - theirs).abs().max() < 1e-4


def test_the_gpt2_tokenizer_gives_tiktokens_ids(tmp_path):
    checkpoint(str(tmp_path / "ckpt.pt"), vocab_size=50257)
    export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")])
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = data.get_tokenizer("gpt2")
    text = "X:1\nT:The Kesh Jig\nK:G\n|:GAG GAB|ABA ABd| Hello, world!  It's 2026 -- naïve café 日本."
    assert tokenizer(text)["input_ids"] == enc.encode_ordinary(text)
    assert tokenizer.decode(enc.encode_ordinary(text)) == text
    assert tokenizer.eos_token_id == enc.eot_token == 50256


def test_bad_exports_are_refused_in_one_line(tmp_path):
    checkpoint(str(tmp_path / "ckpt.pt"))
    script = os.path.join(ROOT, "scripts", "export_hf.py")
    done = subprocess.run([sys.executable, script, str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "257-token (byte-level) vocabulary, which has no Hugging Face tokenizer: add --no_tokenizer" in done.stderr
    os.makedirs(tmp_path / "taken")
    with pytest.raises(train.TrainError, match="exists: give a new folder"):
        export_hf.main([str(tmp_path / "ckpt.pt"), str(tmp_path / "taken"), "--no_tokenizer"])
    assert os.listdir(tmp_path / "taken") == [] and sorted(os.listdir(tmp_path)) == ["ckpt.pt", "taken"]
