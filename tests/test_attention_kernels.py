"""The blocked path's building blocks: the dropout mask, and the two in-place autograd Functions
(`BandAttention`, `GlobalRowsAttention`) checked against finite differences and against eager with dropout on."""

from __future__ import annotations

import math

import pytest
import torch

from structformer import StructBertForMaskedLM
from structformer.modeling import attention_structbert as msb


@pytest.mark.parametrize("shape", [(4, 100_000), (3, 33_333)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_rate_per_draw_slot(shape, p):
    torch.manual_seed(0)
    mask = msb.dropout_mask(shape, p, torch.device("cpu"))
    assert mask.shape == shape and mask.dtype == torch.bool
    flat = mask.flatten()
    # Each 64-bit word gives four draws: every slot must have the rate p on its own.
    for slot in range(4):
        draws = flat[slot::4].double()
        sigma = math.sqrt(p * (1 - p) / draws.numel())
        assert abs(draws.mean().item() - p) < 5 * sigma, slot
    # Neighbouring slots are independent: P(both dropped) = p^2.
    pairs = flat[: flat.numel() // 4 * 4].view(-1, 4)
    both = (pairs[:, 0] & pairs[:, 1]).double().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / pairs.shape[0])


def test_dropout_mask_extremes_and_seeding():
    cpu = torch.device("cpu")
    assert not msb.dropout_mask((1000,), 0.0, cpu).any()
    assert msb.dropout_mask((1000,), 1.0, cpu).all()
    torch.manual_seed(3)
    first = msb.dropout_mask((5, 7), 0.3, cpu)
    torch.manual_seed(3)
    assert torch.equal(msb.dropout_mask((5, 7), 0.3, cpu), first)
    assert not torch.equal(msb.dropout_mask((5, 7), 0.3, cpu), first)


def test_fast_dropout_values():
    x = torch.ones(10_000)
    assert msb.fast_dropout(x, 0.0) is x
    torch.manual_seed(0)
    out = msb.fast_dropout(x, 0.2)
    assert set(out.unique().tolist()) == {0.0, 1.25}
    assert torch.equal(msb.fast_dropout(x, 1.0), torch.zeros_like(x))
    module = msb.StructBertDropout(0.2).eval()
    assert module(x) is x


def _pattern_inputs(section: bool):
    """A small pattern with padding, different global counts per row and (optionally) sections."""
    key_ok = torch.ones(2, 21, dtype=torch.bool)
    key_ok[1, 15:] = False
    is_global = torch.zeros(2, 21, dtype=torch.bool)
    is_global[0, [0, 7, 16]] = True
    is_global[1, [4]] = True
    section_ids = is_global.long().cumsum(dim=1) if section else None
    return msb.build_attention_pattern("blocked", 8, key_ok, is_global, section_ids)


@pytest.mark.parametrize("section", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_band_and_global_rows_gradcheck(section, dropout_p):
    """Both Functions' backward against finite differences (float64), with a fixed dropout mask."""
    torch.manual_seed(0)
    pattern = _pattern_inputs(section)
    batch_size, length = pattern.key_ok.shape
    heads, head_dim = 2, 3
    q, k, v = (
        torch.randn(batch_size, heads, length, head_dim, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )
    index = pattern.global_index.clamp(max=length - 1)[:, None, :, None].expand(-1, heads, -1, head_dim)
    num_blocks, block = pattern.mask.row_empty.shape[1], pattern.mask.row_empty.shape[3]
    band_drop = rows_drop = None
    if dropout_p:
        band_drop = msb.dropout_mask(
            (batch_size * num_blocks, heads, block, pattern.mask.bias.shape[-1]), dropout_p, q.device
        )
        rows_drop = msb.dropout_mask((batch_size, heads, index.shape[2], length), dropout_p, q.device)
    bias = pattern.mask.bias.double()

    def band(q, k, v):
        return msb.BandAttention.apply(
            q, k, v, bias, pattern.mask.row_empty, band_drop, index, 0.7, dropout_p
        )

    key_bias = torch.zeros(batch_size, 1, 1, length, dtype=torch.float64)
    key_bias.masked_fill_(~pattern.key_ok[:, None, None, :], -math.inf)

    def rows(q, k, v):
        return msb.GlobalRowsAttention.apply(q, k, v, index, key_bias, rows_drop, 0.7, dropout_p)

    assert torch.autograd.gradcheck(band, (q, k, v), atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(rows, (q, k, v), atol=1e-8, rtol=1e-6)


def test_blocked_training_matches_eager_when_no_entry_is_dropped(
    make_tiny_config, structured_batch, monkeypatch
):
    """With attention dropout on but a mask that drops nothing, the blocked path must scale the kept
    probabilities by 1 / (1 - p) exactly as eager does (it folds that scale into the values)."""

    def keep_all(shape, p, device):
        return torch.zeros(shape, dtype=torch.bool, device=device)

    monkeypatch.setattr(msb, "dropout_mask", keep_all)
    torch.manual_seed(0)
    config = make_tiny_config(attention_probs_dropout_prob=0.25, attention_window=[4, 8])
    model = StructBertForMaskedLM(config).train()
    results = {}
    for name in ("eager", "blocked"):
        model.set_attn_implementation(name)
        model.zero_grad()
        logits = model(**structured_batch).logits
        logits.square().mean().backward()
        results[name] = (logits.detach(), model.structbert.embeddings.word_embeddings.weight.grad.clone())
    torch.testing.assert_close(results["blocked"][0], results["eager"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["blocked"][1], results["eager"][1], atol=1e-5, rtol=1e-5)


def test_blocked_backward_twice_with_retained_graph(make_tiny_config, structured_batch):
    """The backward reuses saved buffers only when the graph is not kept: a second backward through a
    retained graph must give the same gradients as the first."""
    torch.manual_seed(0)
    config = make_tiny_config(attention_probs_dropout_prob=0.3, attention_window=[4, 8])
    model = StructBertForMaskedLM(config).train()
    model.set_attn_implementation("blocked")
    loss = model(**structured_batch).logits.square().mean()
    loss.backward(retain_graph=True)
    first = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss.backward()
    second = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=0, rtol=0, msg=name)


def test_private_torch_calls_have_working_fallbacks(make_tiny_config, structured_batch, monkeypatch):
    """Without the private aten softmax ops and autograd's keep-graph query, the blocked path computes the same
    forward and gradients as eager, through the public fallbacks."""
    assert msb.private_aten_op("_no_such_op", "default") is None
    assert msb.private_aten_op("_softmax", "no_such_overload") is None
    for name in ("SOFTMAX_OUT", "SOFTMAX_BACKWARD", "SOFTMAX_BACKWARD_OUT"):
        assert getattr(msb, name) is not None  # this torch has them: the test removes something real
        monkeypatch.setattr(msb, name, None)
    monkeypatch.delattr(torch._C._autograd, "_get_current_graph_task_keep_graph")
    assert msb.graph_is_kept()  # unknown: keep the saved tensors

    torch.manual_seed(0)
    config = make_tiny_config(attention_window=[4, 8], separate_global_projections=True)
    model = StructBertForMaskedLM(config)
    weights = torch.randn(4, 24, 99)
    results = {}
    for name in ("eager", "blocked"):
        model.set_attn_implementation(name)
        model.zero_grad()
        logits = model(**structured_batch).logits
        (logits * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (logits.detach(), grads)
    torch.testing.assert_close(results["blocked"][0], results["eager"][0], atol=1e-5, rtol=0)
    for name, grad in results["eager"][1].items():
        torch.testing.assert_close(results["blocked"][1][name], grad, atol=1e-5, rtol=1e-5, msg=name)
