"""The GPT: shapes, tying, the fused-loss path against plain logits, and generation."""
import pytest
import torch
import torch.nn.functional as F

from kernels import linear_cross_entropy_reference
from model import GPT, PRESETS, GPTConfig, config_from_preset


def tiny(**kw):
    return GPT(GPTConfig(**{**dict(vocab_size=100, seq_len=16, n_layer=2, n_head=2, d_model=32, d_ff=64), **kw}))


def test_forward_backward_shapes_and_padded_vocab():
    torch.manual_seed(0)
    model = tiny()
    assert model.cfg.padded_vocab == 128 and model.wte.weight.shape == (128, 32)
    idx = torch.randint(0, 100, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 100) and loss is None
    _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_fused_loss_equals_cross_entropy_of_logits():
    torch.manual_seed(0)
    model = tiny()
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    targets[0, :5] = -1  # ignored positions
    _, loss = model(idx, targets)
    h = model.hidden(idx)
    expected = F.cross_entropy((h @ model.wte.weight.t()).flatten(0, 1), targets.flatten(), ignore_index=-1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("chunk", [7, 1024])
def test_reference_linear_cross_entropy_gradients(chunk):
    """The chunked reference (gradients computed in the forward pass) against autograd in float64."""
    torch.manual_seed(0)
    h = torch.randn(30, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (30,))
    t[::4] = -1
    g = torch.tensor(1.7, dtype=torch.float64)
    loss = linear_cross_entropy_reference(h, w, t, -1, chunk_size=chunk)
    dh, dw = torch.autograd.grad(loss * g, (h, w))
    expected = F.cross_entropy(h @ w.t(), t, ignore_index=-1)
    edh, edw = torch.autograd.grad(expected * g, (h, w))
    assert torch.allclose(loss, expected) and torch.allclose(dh, edh) and torch.allclose(dw, edw)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy_reference(h, w, t, -1, chunk_size=chunk), expected)


def test_tied_then_untied_keeps_function_and_separates_weights():
    torch.manual_seed(0)
    model = tiny()
    assert model.lm_head is None and model.output_weight is model.wte.weight
    n_tied = model.num_params()
    idx = torch.randint(0, 100, (2, 16))
    before = model(idx, idx)[1].item()
    model.untie()
    assert model.num_params() == n_tied + 128 * 32
    assert model(idx, idx)[1].item() == pytest.approx(before, rel=1e-6)
    _, loss = model(idx, idx)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    assert tiny().to(torch.bfloat16).untie().lm_head.weight.dtype == torch.bfloat16  # the copy keeps the dtype


def test_causal_no_future_leak():
    torch.manual_seed(0)
    model = tiny().eval()
    idx = torch.randint(0, 100, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 100
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6) and not torch.allclose(a[0, 10:], b[0, 10:])


def test_residual_init_is_scaled_by_depth():
    torch.manual_seed(0)
    model = GPT(config_from_preset("cpu-mini", vocab_size=257, n_layer=8))
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / (2 * 8) ** 0.5, rel=0.1)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_presets_and_flops():
    olmo = config_from_preset("olmo-1b", vocab_size=50257)
    assert (olmo.d_model, olmo.n_layer, olmo.n_head, olmo.d_ff, olmo.seq_len) == (2048, 16, 16, 8192, 2048)
    assert config_from_preset("olmo-3b").n_layer == 2 * olmo.n_layer
    model = tiny()
    non_embedding = model.num_params(include_embedding=False)
    assert model.flops_per_token() == 6 * (non_embedding + 128 * 32) + 12 * 2 * 32 * 16
    assert set(PRESETS) >= {"cpu-mini", "gpt2-124m", "olmo-1b"}


def test_generate_appends_tokens_in_vocab():
    torch.manual_seed(0)
    out = tiny().generate(torch.zeros(2, 3, dtype=torch.long), 20, top_k=5)
    assert out.shape == (2, 23) and int(out.max()) < 100
