"""The GPT: a decoder-only transformer with the paper's (OLMo-style) choices, readable top to bottom.

    tokens -> embedding -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> logits

Choices, following OLMo-1B which the paper trains:
- pre-norm with *non-parametric* LayerNorm (no gain, no bias) or RMSNorm; no biases anywhere;
- rotary position embeddings (RoPE) on queries and keys, full multi-head attention;
- SwiGLU MLP: down(silu(gate(x)) * up(x)), hidden size d_ff;
- input and output embeddings tied during pretraining; `untie()` gives the output layer its own
  copy for finetuning (the paper unties them there) without changing the function;
- vocabulary padded to a multiple of 64 (faster matmuls; the padded logits learn to stay tiny);
- residual output projections initialised with std 0.02 / sqrt(2 * n_layer), so the residual stream
  does not grow with depth (GPT-2's scaled init).

This is exactly the architecture of Hugging Face's OLMo (v1) (Llama's, with RMSNorm), which is why
scripts/export_hf.py can hand a trained model to the ecosystem by renaming (and splitting) weights.

Attention and the loss go through kernels/ (Triton on CUDA, the PyTorch reference elsewhere). The
loss never materialises more than a chunk of the (tokens x vocab) logits.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels import causal_attention, linear_cross_entropy


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 2048
    norm: str = "layernorm"  # non-parametric LayerNorm (OLMo) or "rmsnorm"
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    @property
    def padded_vocab(self) -> int:
        return 64 * math.ceil(self.vocab_size / 64)


# Presets: the paper's family plus sizes that run on one GPU or a laptop CPU. vocab_size is set from
# the dataset's tokenizer at run time. "300m"/"600m" are our reading of "half the layers, narrower".
PRESETS = {
    "cpu-tiny": dict(seq_len=64, n_layer=2, n_head=2, d_model=64, d_ff=192),
    "cpu-mini": dict(seq_len=128, n_layer=4, n_head=4, d_model=128, d_ff=384),
    "gpt2-124m": dict(seq_len=1024, n_layer=12, n_head=12, d_model=768, d_ff=2048),
    "olmo-300m": dict(seq_len=2048, n_layer=8, n_head=12, d_model=1536, d_ff=6144),
    "olmo-600m": dict(seq_len=2048, n_layer=8, n_head=16, d_model=2048, d_ff=8192),
    "olmo-1b": dict(seq_len=2048, n_layer=16, n_head=16, d_model=2048, d_ff=8192),
    "olmo-3b": dict(seq_len=2048, n_layer=32, n_head=16, d_model=2048, d_ff=8192),
}


def config_from_preset(name: str, **overrides) -> GPTConfig:
    """A preset's shape with the overrides that are not None (train.py's --model and its size flags)."""
    return GPTConfig(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


class Norm(nn.Module):
    """Parameter-free: OLMo found the learned gain and bias unnecessary at this scale."""

    def __init__(self, kind: str, dim: int):
        super().__init__()
        self.kind, self.dim = kind, dim  # "layernorm" or "rmsnorm"

    def forward(self, x):
        if self.kind == "layernorm":
            return F.layer_norm(x, (self.dim,), eps=1e-5)
        return F.rms_norm(x, (self.dim,), eps=1e-5)


def rope_tables(seq_len: int, head_dim: int, theta: float):
    """cos/sin of position * frequency, one frequency per pair of channels."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (first half, second half) channel pair of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = causal_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)  # one matmul for both
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1, self.attn = Norm(cfg.norm, cfg.d_model), Attention(cfg)
        self.norm2, self.mlp = Norm(cfg.norm, cfg.d_model), SwiGLU(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head or (cfg.d_model // cfg.n_head) % 2:
            raise ValueError(f"d_model {cfg.d_model} must split into {cfg.n_head} heads of even size (RoPE)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = Norm(cfg.norm, cfg.d_model)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.d_model // cfg.n_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # train.py --act_ckpt: keep only each block's input and recompute the block in backward, one
        # block's activations alive instead of all of them, for a third more compute. Not part of cfg:
        # it changes memory and time, never the function.
        self.act_ckpt = False
        self.apply(self.init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # the two projections that write into the residual stream
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def output_weight(self):
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def untie(self):
        """Give the output layer its own copy of the embedding matrix (the paper's finetuning setup)."""
        if self.lm_head is None:
            self.lm_head = nn.Linear(self.cfg.d_model, self.cfg.padded_vocab, bias=False)
            self.lm_head.to(device=self.wte.weight.device, dtype=self.wte.weight.dtype)
            self.lm_head.weight.data.copy_(self.wte.weight.data)
            self.cfg.tie_embeddings = False
        return self

    def hidden(self, idx):
        if idx.shape[1] > self.cfg.seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds the model's seq_len {self.cfg.seq_len}")
        x = self.wte(idx)
        for block in self.blocks:
            if self.act_ckpt and torch.is_grad_enabled():
                x = checkpoint(block, x, self.rope_cos, self.rope_sin, use_reentrant=False)
            else:
                x = block(x, self.rope_cos, self.rope_sin)
        return self.norm_f(x)

    def forward(self, idx, targets=None):
        """With targets: (None, mean loss over targets != -1), fused so the logits are never all held.
        Without: (logits over the real vocabulary, None)."""
        h = self.hidden(idx)
        if targets is not None:
            return None, linear_cross_entropy(h.flatten(0, 1), self.output_weight, targets.flatten(), ignore_index=-1)
        return (h @ self.output_weight.t())[..., : self.cfg.vocab_size], None

    def num_params(self, include_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embedding else n - self.wte.weight.numel()

    def flops_per_token(self) -> float:
        """Training FLOPs per token, forward + backward, PaLM's convention: 6 per parameter that takes
        part in a matmul (every weight but the embedding lookup, plus the output layer even when tied)
        plus 12 * n_layer * d_model * seq_len for the attention scores and values. Causal masking
        skips half of that attention work, but the convention (and MFU tables) count it in full."""
        cfg = self.cfg
        matmul_params = self.num_params(include_embedding=False) + (cfg.padded_vocab * cfg.d_model if self.lm_head is None else 0)
        return 6 * matmul_params + 12 * cfg.n_layer * cfg.d_model * cfg.seq_len

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.seq_len:])
            logits = logits[:, -1] / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        return idx

    def config_dict(self) -> dict:
        return asdict(self.cfg)
