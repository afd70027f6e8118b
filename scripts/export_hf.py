"""Export a checkpoint as a Hugging Face model folder, for the ecosystem's tools.

    python scripts/export_hf.py out/d0.05/ckpt_1M.pt out/hf/d0.05
    python scripts/export_hf.py out/d0.05/ft_ckpt_1M/ckpt_best.pt out/hf/d0.05-ft   # finetuned: untied
    lm_eval --model hf --model_args pretrained=out/hf/d0.05 --tasks hellaswag,arc_easy --device cuda

The folder holds config.json, model.safetensors (fp32) and, for GPT-2 tokens, the tokenizer
(tokenizer.json and tokenizer_config.json), so transformers, lm-eval-harness and vLLM read it like any
hub model: AutoModelForCausalLM.from_pretrained(folder) and AutoTokenizer.from_pretrained(folder).

Which architecture: model.py is OLMo (v1) exactly: pre-norm with LayerNorm that has no weight or
bias, rotary embeddings on half-split channel pairs, SwiGLU, no biases, embeddings tied unless
finetuned. transformers' OlmoForCausalLM computes the same function, so the export only renames and
splits weights (our fused qkv and gate_up matrices become q/k/v_proj and gate/up_proj). A model
trained with --norm rmsnorm becomes a LlamaForCausalLM with its norm weights set to one. The
vocabulary keeps model.py's padding to a multiple of 64 (as OLMo's own 50304-word embedding does);
the tokenizer never produces the padded ids.

Why this script never imports transformers: transformers imports a package of its own called
`kernels` (Hugging Face's hub kernels), and in a process that has this repository on its path that
name is our kernels/ folder, so transformers fails to load any model there. The folder's three files
are plain formats, written here directly: config.json by hand, the weights with `safetensors`, the
tokenizer with `tokenizers` (both come with transformers). Load the export from a process started
outside this repository, or with a console script (lm_eval, vllm), whose path does not hold it.

The GPT-2 tokenizer is rebuilt from the BPE ranks data.py tokenizes with (no download): a byte-pair
model needs the merges, which tiktoken's ranks imply (each token is the merge of the two pieces that
byte-pair encoding with the lower ranks alone leaves of it), and the same split pattern.
A byte-level model has no Hugging Face tokenizer: the export refuses in one line, and --no_tokenizer
writes the model alone (token ids 0-255 are the UTF-8 bytes, 256 ends a document).
"""
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import run_folder  # noqa: E402
import settings  # noqa: E402

TOKENIZERS = {50257: "gpt2"}  # vocabulary size -> the tokenizer that has it (byte-level, 257, has none)


def hf_config(mc: dict) -> dict:
    """config.json of the same architecture and shape, as transformers writes it (rope_theta also at
    the top level, where transformers before 5.0 reads it)."""
    rmsnorm = mc["norm"] == "rmsnorm"
    return {"architectures": ["LlamaForCausalLM" if rmsnorm else "OlmoForCausalLM"],
            "model_type": "llama" if rmsnorm else "olmo",
            "vocab_size": 64 * -(-mc["vocab_size"] // 64), "hidden_size": mc["d_model"],
            "intermediate_size": mc["d_ff"], "num_hidden_layers": mc["n_layer"],
            "num_attention_heads": mc["n_head"], "num_key_value_heads": mc["n_head"], "hidden_act": "silu",
            "max_position_embeddings": mc["seq_len"], "attention_bias": False,
            "rope_theta": mc["rope_theta"], "rope_parameters": {"rope_type": "default", "rope_theta": mc["rope_theta"]},
            "tie_word_embeddings": mc["tie_embeddings"], "bos_token_id": None,
            "eos_token_id": mc["vocab_size"] - 1, "pad_token_id": mc["vocab_size"] - 1, "torch_dtype": "float32",
            **({"rms_norm_eps": 1e-5, "mlp_bias": False} if rmsnorm else {"clip_qkv": None})}


def hf_state_dict(model) -> dict:
    """model.py's weights under transformers' names: the fused matrices split, norms of ones for Llama.
    A tied output layer is the embedding itself, which the folder stores once."""
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
    if not model.cfg.tie_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    return {name: t.detach().contiguous() for name, t in state.items()}


def byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as byte-level BPE vocabularies spell tokens: bytes that
    print as themselves keep their character, the others take the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: byte-pair encoding of the token with
    only the merges ranked below it stops at exactly two pieces, and those are the pair."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= rank:
                raise ValueError(f"token {token!r} is not made by a merge of lower-ranked tokens: not a BPE vocabulary")
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer(name: str, seq_len: int, folder: str):
    """tokenizer.json (a byte-level BPE with tiktoken's split pattern and <|endoftext|> as the end and
    start of a document) and tokenizer_config.json, which AutoTokenizer reads."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    enc = data.get_tokenizer(name)
    ranks = {token: enc.encode_single_token(token) for token in enc.token_byte_values()}
    symbols = byte_symbols()

    def spell(token: bytes) -> str:
        return "".join(symbols[b] for b in token)
    tokenizer = Tokenizer(models.BPE(vocab={spell(t): r for t, r in ranks.items()},
                                     merges=[(spell(a), spell(b)) for a, b in bpe_merges(ranks)], fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(data.EOT, special=True, normalized=False)])
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": data.EOT, "eos_token": data.EOT,
              "unk_token": data.EOT, "model_max_length": seq_len, "clean_up_tokenization_spaces": False}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def export(checkpoint: str, out_dir: str, no_tokenizer: bool = False) -> str:
    if os.path.exists(out_dir):
        raise settings.TrainError(f"{out_dir} exists: give a new folder (the export never writes over one)")
    model, ckpt = run_folder.load_model(checkpoint)  # the checkpoint is checked first, with or without the packages
    vocab = model.cfg.vocab_size
    if vocab not in TOKENIZERS and not no_tokenizer:
        raise settings.TrainError(f"{checkpoint} has a {vocab}-token (byte-level) vocabulary, which has no Hugging Face "
                                  f"tokenizer: add --no_tokenizer to export the model alone (ids 0-255 are UTF-8 "
                                  f"bytes, 256 ends a document)")
    try:
        from safetensors.torch import save_file
        import tokenizers  # noqa: F401
    except ImportError:
        raise settings.TrainError("the export needs safetensors and tokenizers: pip install safetensors tokenizers "
                                  "(transformers brings both)") from None
    tmp = f"{out_dir.rstrip('/')}.tmp{os.getpid()}"  # written whole, then renamed: never half an export
    try:
        os.makedirs(tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(model.config_dict()), f, indent=1)
        save_file(hf_state_dict(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if vocab in TOKENIZERS and not no_tokenizer:
            write_tokenizer(TOKENIZERS[vocab], model.cfg.seq_len, tmp)
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
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({out!r}), from a process outside this repository")


if __name__ == "__main__":
    try:
        main()
    except (settings.TrainError, data.DataError) as e:
        sys.exit(f"export_hf.py: {e}")
