"""Export a checkpoint as a Hugging Face transformers model folder, for the ecosystem's tools.

    python scripts/export_hf.py out/d0.05/ckpt_1M.pt out/hf/d0.05
    python scripts/export_hf.py out/d0.05/ft_ckpt_1M/ckpt_best.pt out/hf/d0.05-ft   # finetuned: untied
    lm_eval --model hf --model_args pretrained=out/hf/d0.05 --tasks hellaswag,arc_easy --device cuda

The folder holds config.json, model.safetensors (fp32) and, for GPT-2 tokens, the tokenizer, so
transformers, lm-eval-harness and vLLM read it like any hub model:
AutoModelForCausalLM.from_pretrained(folder) and AutoTokenizer.from_pretrained(folder).

Which architecture: model.py is OLMo (v1) exactly: pre-norm with LayerNorm that has no weight or
bias, rotary embeddings on half-split channel pairs, SwiGLU, no biases, embeddings tied unless
finetuned. transformers' OlmoForCausalLM computes the same function, so the export only renames and
splits weights (our fused qkv and gate_up matrices become q/k/v_proj and gate/up_proj). A model
trained with --norm rmsnorm becomes a LlamaForCausalLM with its norm weights set to one. The
vocabulary keeps model.py's padding to a multiple of 64 (as OLMo's own 50304-word embedding does);
the tokenizer never produces the padded ids.

A byte-level model has no Hugging Face tokenizer: the export refuses in one line, and --no_tokenizer
writes the model alone (token ids 0-255 are the UTF-8 bytes, 256 ends a document).
Needs `pip install transformers` (not a requirement of the rest of the project).
"""
import base64
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import run_folder  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402

TOKENIZERS = {50257: "gpt2"}  # vocabulary size -> the tokenizer that has it (byte-level, 257, has none)


def hf_config(mc: dict):
    """The transformers config of the same architecture and shape."""
    from transformers import LlamaConfig, OlmoConfig
    shape = dict(vocab_size=64 * -(-mc["vocab_size"] // 64), hidden_size=mc["d_model"], intermediate_size=mc["d_ff"],
                 num_hidden_layers=mc["n_layer"], num_attention_heads=mc["n_head"],
                 num_key_value_heads=mc["n_head"], hidden_act="silu", max_position_embeddings=mc["seq_len"],
                 rope_theta=mc["rope_theta"], attention_bias=False, tie_word_embeddings=mc["tie_embeddings"],
                 bos_token_id=None, eos_token_id=mc["vocab_size"] - 1, pad_token_id=mc["vocab_size"] - 1)
    if mc["norm"] == "layernorm":
        return OlmoConfig(clip_qkv=None, **shape)
    return LlamaConfig(rms_norm_eps=1e-5, mlp_bias=False, **shape)


def hf_state_dict(model) -> dict:
    """model.py's weights under transformers' names: the fused matrices split, norms of ones for Llama."""
    d, f = model.cfg.d_model, model.cfg.d_ff
    state = {"model.embed_tokens.weight": model.wte.weight}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv.weight.split(d)
        gate, up = block.mlp.gate_up.weight.split(f)
        state.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                      p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": block.attn.proj.weight,
                      p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                      p + "mlp.down_proj.weight": block.mlp.proj.weight})
        if model.cfg.norm == "rmsnorm":
            state.update({p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d)})
    if model.cfg.norm == "rmsnorm":
        state["model.norm.weight"] = torch.ones(d)
    state["lm_head.weight"] = model.output_weight  # the embedding itself while tied
    return {name: t.detach().contiguous() for name, t in state.items()}


def hf_tokenizer(name: str, seq_len: int):
    """The GPT-2 tokenizer as a transformers fast tokenizer, built from the same BPE ranks data.py
    tokenizes with (no download): same ids, <|endoftext|> as the end (and start) of a document."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    enc = data.get_tokenizer(name)
    with tempfile.TemporaryDirectory() as tmp:
        ranks = os.path.join(tmp, f"{name}.tiktoken")
        with open(ranks, "w") as f:  # tiktoken's own file format, which the converter reads
            for token in enc.token_byte_values():
                f.write(f"{base64.b64encode(token).decode()} {enc.encode_single_token(token)}\n")
        fast = TikTokenConverter(ranks, pattern=enc._pat_str, extra_special_tokens=[data.EOT]).converted()
    return PreTrainedTokenizerFast(tokenizer_object=fast, bos_token=data.EOT, eos_token=data.EOT,
                                   unk_token=data.EOT, model_max_length=seq_len)


def export(checkpoint: str, out_dir: str, no_tokenizer: bool = False) -> str:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise train.TrainError("the export needs transformers: pip install transformers")
    if os.path.exists(out_dir):
        raise train.TrainError(f"{out_dir} exists: give a new folder (the export never writes over one)")
    model, ckpt = run_folder.load_model(checkpoint)
    vocab = model.cfg.vocab_size
    if vocab not in TOKENIZERS and not no_tokenizer:
        raise train.TrainError(f"{checkpoint} has a {vocab}-token (byte-level) vocabulary, which has no Hugging Face "
                               f"tokenizer: add --no_tokenizer to export the model alone (ids 0-255 are UTF-8 "
                               f"bytes, 256 ends a document)")
    from transformers import AutoModelForCausalLM
    config = hf_config(model.config_dict())
    with torch.device("meta"):  # the shapes only: the checkpoint's weights are assigned below
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.load_state_dict(hf_state_dict(model), strict=True, assign=True)
    hf.tie_weights()
    tmp = f"{out_dir.rstrip('/')}.tmp{os.getpid()}"  # written whole, then renamed: never half an export
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        if vocab in TOKENIZERS and not no_tokenizer:
            hf_tokenizer(TOKENIZERS[vocab], model.cfg.seq_len).save_pretrained(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv=None):
    p = settings.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a ckpt_<tokens>.pt (file or folder of shards) or a finetuned ckpt_best.pt")
    p.add_argument("out_dir", help="the model folder to write (must not exist)")
    p.add_argument("--no_tokenizer", action="store_true", help="write the model without a tokenizer (byte-level)")
    args = p.parse_args(argv)
    out = export(args.checkpoint, args.out_dir, args.no_tokenizer)
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({out!r})")


if __name__ == "__main__":
    try:
        main()
    except (train.TrainError, data.DataError) as e:
        sys.exit(f"export_hf.py: {e}")
