"""StructBERT's attention kernels: the structure mask, the mask each attention path needs, and the paths.

Hub remote code beside `modeling_structbert.py`, which imports it relatively (transformers copies both when a
model is saved, and fetches both with `trust_remote_code=True`); it imports only torch and transformers.

Notation used in the shape comments:
    B  batch size          L  sequence length      H  attention heads      D  head dimension
    W  attention window (total width, even)        C  block size of the blocked path, W / 2
    N  number of query blocks, ceil(L / C)         G  global tokens per row, padded to the largest count
    K  keys per query block of the blocked path, 3C + G

Attention definition: query i may attend to key j iff j is not padding and (i is global, or j is global, or
|i - j| <= W / 2 and (scope is "window" or section_ids[i] == section_ids[j])). A row with no allowed key
outputs zeros. `structure_mask_function` writes this rule once; every mask is derived from it.

Paths and their masks, as transformers pairs attention functions with mask builders (`AttentionInterface`,
`AttentionMaskInterface`): every path is registered twice under one name, its function in
`StructBertAttentionInterface` and its mask builder in `StructBertMaskInterface`.

    name              function                      mask (`AttentionPattern.mask`)
    "eager"           dense masked softmax          (B, 1, L, L) bool, query i may attend key j; the definition
    "sdpa"            torch's SDPA                  `DenseMask`: the same with key-less rows opened, and the rows
    "flex_attention"  FlexAttention                 a BlockMask, from the rule as mask_mod
    "blocked"         band of 3 blocks + globals    `BandMask`: an additive (B * N, 1, C, K) bias and empty rows

A new path: `StructBertAttentionInterface.register("name", function)` and, when it wants a mask of its own,
`StructBertMaskInterface.register("name", builder)` (without one it gets the eager mask and the rule itself,
`pattern.may_attend`). "auto" reads `AUTO_RULE`, an ordered list of (name, condition) of registered paths.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from transformers import AttentionInterface
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.utils.generic import GeneralInterface

MaskFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------------------
# The rule, and the pattern a forward builds once per window
# --------------------------------------------------------------------------------------------------------------


def structure_mask_function(
    window: int, key_ok: torch.Tensor, is_global: torch.Tensor, section_ids: torch.Tensor | None
) -> MaskFunction:
    """The attention definition, written once: `may_attend(b, q_idx, kv_idx)` is True where query q_idx of row
    b may attend key kv_idx. The three index tensors broadcast against each other, so one call gives a whole
    mask; FlexAttention calls it with scalars. key_ok, is_global: (B, L) bool; section_ids: (B, L) or None for
    the "window" scope (locality is then position distance alone)."""
    half = window // 2

    def may_attend(b: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # |q_idx - kv_idx| <= half as two comparisons: no integer tensor of the mask's size.
        local = (kv_idx >= q_idx - half) & (kv_idx <= q_idx + half)
        if section_ids is not None:
            local = local & (section_ids[b, q_idx] == section_ids[b, kv_idx])
        return key_ok[b, kv_idx] & (is_global[b, q_idx] | is_global[b, kv_idx] | local)

    return may_attend


@dataclass
class AttentionPattern:
    """The structure of one window, and the mask its attention path needs (`mask`, built by the path's
    registered builder). Built once per forward and window, shared by the layers of that window."""

    implementation: str  # a key of ALL_ATTENTION_FUNCTIONS
    window: int
    key_ok: torch.Tensor  # (B, L) bool: the key is not padding
    is_global: torch.Tensor  # (B, L) bool
    global_index: torch.Tensor  # (B, G) long: positions of the global tokens, in order; L marks an empty slot
    may_attend: MaskFunction  # the rule (`structure_mask_function`), for paths that build their own mask
    mask: Any = None  # what the path's mask builder returned (see the module docstring)


def build_attention_pattern(
    implementation: str,
    window: int,
    key_ok: torch.Tensor,
    is_global: torch.Tensor,
    section_ids: torch.Tensor | None,
) -> AttentionPattern:
    """Padding, global and section information -> the pattern of one window, with the mask of `implementation`
    (its builder in `ALL_MASK_FUNCTIONS`, the dense mask for a path registered without one).

    `section_ids` is None for the "window" scope; then locality is position distance alone.
    """
    length = key_ok.shape[1]
    counts = is_global.sum(dim=1)  # (B,)
    num_global = int(counts.max()) if length > 0 else 0
    # A stable sort on "not global" puts the global positions first, in document order.
    order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :num_global]  # (B, G)
    slot_used = torch.arange(num_global, device=key_ok.device)[None, :] < counts[:, None]  # (B, G)
    global_index = torch.where(slot_used, order, length)  # (B, G)
    may_attend = structure_mask_function(window, key_ok, is_global, section_ids)
    pattern = AttentionPattern(implementation, window, key_ok, is_global, global_index, may_attend)
    pattern.mask = ALL_MASK_FUNCTIONS.get(implementation, dense_mask)(pattern)
    return pattern


# --------------------------------------------------------------------------------------------------------------
# Mask builders: pattern -> the mask of one path
# --------------------------------------------------------------------------------------------------------------


def dense_mask(pattern: AttentionPattern) -> torch.Tensor:
    """(B, 1, L, L) bool: query i may attend key j (one call of the rule over all index pairs)."""
    batch_size, length = pattern.key_ok.shape
    device = pattern.key_ok.device
    batch = torch.arange(batch_size, device=device)[:, None, None]  # (B, 1, 1)
    positions = torch.arange(length, device=device)
    allowed = pattern.may_attend(batch, positions[None, :, None], positions[None, None, :])  # (B, L, L)
    return allowed[:, None]  # (B, 1, L, L)


@dataclass
class DenseMask:
    """SDPA's mask: the dense mask with key-less rows opened (SDPA returns NaN for a row without any allowed
    key), and which rows have a key, to zero the others' output."""

    allowed: torch.Tensor  # (B, 1, L, L) bool
    row_has_key: torch.Tensor  # (B, L, 1, 1) bool


def sdpa_mask(pattern: AttentionPattern) -> DenseMask:
    allowed = dense_mask(pattern)  # (B, 1, L, L)
    row_has_key = allowed[:, 0].any(dim=-1)[:, :, None, None]  # (B, L, 1, 1)
    return DenseMask(allowed | ~row_has_key.transpose(1, 2), row_has_key)


def flex_block_mask(pattern: AttentionPattern) -> object:
    """FlexAttention's BlockMask, with the rule as mask_mod."""
    # Imported here: FlexAttention is a prototype API that older torch builds lack, and only this path needs it.
    from torch.nn.attention.flex_attention import create_block_mask

    batch_size, length = pattern.key_ok.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.may_attend(b, q_idx, kv_idx)

    return create_block_mask(mask_mod, batch_size, None, length, length, device=pattern.key_ok.device)


@dataclass
class BandMask:
    """The blocked path's mask: per query block, its 3 key blocks and the global keys."""

    # (B * N, 1, C, K) float, 0 where a query may attend a key and -inf elsewhere (key-less rows opened),
    # shared by the heads and by the layers of the window.
    bias: torch.Tensor
    row_empty: torch.Tensor  # (B, N, 1, C, 1) bool: the queries without any allowed key


def band_mask(pattern: AttentionPattern) -> BandMask:
    batch_size, length = pattern.key_ok.shape
    device = pattern.key_ok.device
    may_attend, global_index = pattern.may_attend, pattern.global_index
    block = pattern.window // 2
    num_blocks = math.ceil(length / block)
    batch = torch.arange(batch_size, device=device)[:, None, None, None]  # (B, 1, 1, 1)
    # Query rows past L (padding of the last block) repeat row L - 1; the path drops their output.
    q_idx = torch.arange(num_blocks * block, device=device).clamp(max=length - 1)
    q_idx = q_idx.view(1, num_blocks, block, 1)  # (1, N, C, 1)
    # Query block n sees key blocks n - 1, n and n + 1.
    k_pos = (torch.arange(num_blocks, device=device)[:, None] - 1) * block
    k_pos = k_pos + torch.arange(3 * block, device=device)  # (N, 3C)
    k_idx = k_pos.clamp(0, length - 1)[None, :, None, :]  # (1, N, 1, 3C)
    # Global keys are left out of the band: they come once, through the global columns.
    in_range = ((k_pos >= 0) & (k_pos < length))[None, :, None, :]  # (1, N, 1, 3C)
    band_key = in_range & ~pattern.is_global[batch, k_idx]  # (B, N, 1, 3C)
    band = may_attend(batch, q_idx, k_idx) & band_key  # (B, N, C, 3C)
    slot_used = (global_index < length)[:, None, None, :]  # (B, 1, 1, G)
    global_key = global_index.clamp(max=length - 1)[:, None, None, :]  # (B, 1, 1, G)
    global_columns = may_attend(batch, q_idx, global_key) & slot_used  # (B, N, C, G)
    band = torch.cat([band, global_columns], dim=-1)  # (B, N, C, K)
    row_empty = ~band.any(dim=-1, keepdim=True)  # (B, N, C, 1)
    # Softmax over a row of -inf is NaN: open key-less rows, then zero their output. -inf (not finfo.min)
    # is exact in every float dtype the scores may have, and every row keeps at least one finite entry.
    band = (band | row_empty).view(batch_size * num_blocks, 1, block, -1)  # (B * N, 1, C, K)
    bias = torch.zeros(band.shape, device=device).masked_fill_(~band, -math.inf)
    return BandMask(bias, row_empty[:, :, None])  # row_empty: (B, N, 1, C, 1)


# --------------------------------------------------------------------------------------------------------------
# Dropout with a cheaper mask
# --------------------------------------------------------------------------------------------------------------


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed entries; exactly 0 elsewhere, and 0 for rows with no allowed entry."""
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)


def dropout_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool mask that is True (drop) with probability p, independently per entry.

    Four 16-bit draws come from each random 64-bit integer, which on CPU is about 3x cheaper than
    `bernoulli_` (one generator call per entry); attention dropout draws a mask as large as the scores. The
    probability is rounded to a multiple of 2**-16 (FlashAttention rounds it to 2**-8).
    """
    if p >= 1:  # the threshold 2**15 would not fit the int16 draws
        return torch.ones(shape, dtype=torch.bool, device=device)
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    draws = words.view(torch.int16)[:numel].view(shape)  # uniform over [-2**15, 2**15)
    return draws < round(p * 2**16) - 2**15


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout with `dropout_mask`: zero entries with probability p, scale the rest by 1 / (1 - p).
    p is 0 in eval mode, and then nothing is drawn."""
    if p == 0:
        return x
    return x.masked_fill(dropout_mask(x.shape, p, x.device), 0.0) * (1 / (1 - p) if p < 1 else 0.0)


class StructBertDropout(nn.Dropout):
    """nn.Dropout with the cheaper mask of `dropout_mask` (the hidden states get dropout 3 times a layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p if self.training else 0.0)


# --------------------------------------------------------------------------------------------------------------
# The paths
# --------------------------------------------------------------------------------------------------------------

# Every attention path has this signature, the transformers one with the structure pattern as the mask:
#     path(module, query, key, value, pattern, scaling=..., dropout=..., global_qkv=...) -> (output, probs)
# query, key, value: (B, H, L, D); pattern: the `AttentionPattern` of the layer's window, built for this path;
# dropout: the attention dropout probability (0 in eval mode); global_qkv: None, or the (query, key, value) of
# the separate global projections, for the rows of the global tokens. output: (B, L, H, D), right for every row;
# probs: (B, H, L, L) or None.


def eager_structure_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: AttentionPattern,
    scaling: float,
    dropout: float = 0.0,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: a dense masked softmax. Returns the output and the probabilities."""
    probs = masked_softmax(query @ key.transpose(-1, -2) * scaling, pattern.mask)  # (B, H, L, L)
    if global_qkv is None:
        out = fast_dropout(probs, dropout) @ value  # (B, H, L, D)
        return out.transpose(1, 2), probs
    q_global, k_global, v_global = global_qkv
    # A global row may attend every non-padding key, which is exactly what `allowed` says for that row.
    probs_global = masked_softmax(q_global @ k_global.transpose(-1, -2) * scaling, pattern.mask)
    rows = pattern.is_global[:, None, :, None]  # (B, 1, L, 1)
    probs = torch.where(rows, probs_global, probs)  # (B, H, L, L)
    dropped = fast_dropout(probs, dropout)
    out = torch.where(rows, dropped @ v_global, dropped @ value)  # (B, H, L, D)
    return out.transpose(1, 2), probs


def sdpa_structure_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: AttentionPattern,
    scaling: float,
    dropout: float = 0.0,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, None]:
    """Dense SDPA (transformers' wrapper) with a boolean mask."""
    out, _ = sdpa_attention_forward(
        module, query, key, value, pattern.mask.allowed, dropout=dropout, scaling=scaling, is_causal=False
    )
    out = out * pattern.mask.row_has_key  # (B, L, H, D)
    if global_qkv is not None:
        out = with_global_rows(out, global_qkv, pattern, scaling, dropout)
    return out, None


def flex_structure_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: AttentionPattern,
    scaling: float,
    dropout: float = 0.0,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, None]:
    """FlexAttention with the BlockMask; rows with no allowed key give 0."""
    if dropout > 0:
        raise ValueError(
            "flex_attention has no attention dropout; use model.eval() or attention_probs_dropout_prob=0"
        )
    if query.device.type == "cpu":
        # transformers' wrapper compiles flex_attention, which on CPU needs a C++ toolchain and minutes of
        # compilation; the uncompiled function is torch's reference implementation (no backward on CPU).
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(query, key, value, block_mask=pattern.mask, scale=scaling).transpose(1, 2)
    else:
        out, _ = flex_attention_forward(module, query, key, value, pattern.mask, scaling=scaling)
    if global_qkv is not None:
        out = with_global_rows(out, global_qkv, pattern, scaling, dropout)
    return out, None  # (B, L, H, D)


# --------------------------------------------------------------------------------------------------------------
# The blocked path's kernels (custom autograd, private aten ops guarded)
# --------------------------------------------------------------------------------------------------------------


def blocks_of(x: torch.Tensor, block: int, num_blocks: int, margin: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, N + 2 * margin, H, C, D): x cut into blocks of C, zero-padded, with `margin` zero
    blocks on each side."""
    batch_size, num_heads, length, head_dim = x.shape
    out = x.new_empty(batch_size, num_blocks + 2 * margin, num_heads, block, head_dim)
    full, rest = divmod(length, block)
    # Splitting L into (full, C) is a view of x, so each block is copied once.
    head = x[:, :, : full * block].view(batch_size, num_heads, full, block, head_dim)  # (B, H, full, C, D)
    out[:, margin : margin + full] = head.transpose(1, 2)
    if rest:
        out[:, margin + full, :, :rest] = x[:, :, full * block :]  # (B, H, rest, D)
        out[:, margin + full, :, rest:] = 0
    out[:, :margin] = 0
    out[:, margin + math.ceil(length / block) :] = 0
    return out


def keys_of_blocks(x: torch.Tensor, index: torch.Tensor, block: int, num_blocks: int) -> torch.Tensor:
    """(B, H, L, D) -> (B * N, H, 3C + G, D): per query block, its 3 neighbouring key blocks, then the
    global keys at `index` (B, H, G, D)."""
    batch_size, num_heads, length, head_dim = x.shape
    blocks = blocks_of(x, block, num_blocks, margin=1)  # (B, N + 2, H, C, D)
    global_keys = x.gather(2, index)[:, None].expand(-1, num_blocks, -1, -1, -1)  # (B, N, H, G, D)
    parts = [blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:], global_keys]
    return torch.cat(parts, dim=3).view(batch_size * num_blocks, num_heads, -1, head_dim)


def fold_keys(grad: torch.Tensor, index: torch.Tensor, block: int, length: int) -> torch.Tensor:
    """The adjoint of `keys_of_blocks`: (B * N, H, 3C + G, D) -> (B, H, L, D), summing each key's copies."""
    _, num_heads, _, head_dim = grad.shape
    batch_size = index.shape[0]
    grad = grad.view(batch_size, -1, num_heads, grad.shape[2], head_dim)  # (B, N, H, 3C + G, D)
    num_blocks = grad.shape[1]
    blocks = grad[:, :, :, block : 2 * block].clone()  # (B, N, H, C, D): each block as its own block's keys
    blocks[:, 1:] += grad[:, :-1, :, 2 * block : 3 * block]  # ... as the next block's left neighbour
    blocks[:, :-1] += grad[:, 1:, :, :block]  # ... as the previous block's right neighbour
    out = blocks.transpose(1, 2).reshape(batch_size, num_heads, num_blocks * block, head_dim)[:, :, :length]
    # The global keys: one copy per query block. Empty slots point at L - 1 with zero gradient.
    return out.scatter_add(2, index, grad[:, :, :, 3 * block :].sum(dim=1))  # (B, H, L, D)


def private_aten_op(name: str, overload: str) -> Callable | None:
    """`torch.ops.aten.<name>.<overload>`, or None where this torch lacks it (private ops may change)."""
    try:
        return getattr(getattr(torch.ops.aten, name), overload)
    except (AttributeError, RuntimeError):
        return None


# Private aten ops: softmax and its backward in place (CPU), and softmax's backward as a function (torch has no
# public one). Where they are missing, `softmax_` and `softmax_backward_` compute the same with public calls.
SOFTMAX_OUT = private_aten_op("_softmax", "out")
SOFTMAX_BACKWARD = private_aten_op("_softmax_backward_data", "default")
SOFTMAX_BACKWARD_OUT = private_aten_op("_softmax_backward_data", "out")


def softmax_(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, in place on CPU (tested there against the functional form, which other
    devices use)."""
    if scores.device.type != "cpu" or SOFTMAX_OUT is None:
        return torch.softmax(scores, dim=-1)
    return SOFTMAX_OUT(scores, -1, False, out=scores)


def softmax_backward_(grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The gradient of the scores given that of `probs = softmax(scores)`, in place of `grad` on CPU."""
    if grad.device.type == "cpu" and SOFTMAX_BACKWARD_OUT is not None:
        return SOFTMAX_BACKWARD_OUT(grad, probs, -1, probs.dtype, grad_input=grad)
    if SOFTMAX_BACKWARD is not None:
        return SOFTMAX_BACKWARD(grad, probs, -1, probs.dtype)
    return grad.sub_((grad * probs).sum(dim=-1, keepdim=True)).mul_(probs)  # probs * (grad - <grad, probs>)


def graph_is_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True), so saved tensors must survive it.
    Asks torch's autograd engine (a private call); if that is gone, assumes the graph is kept."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):
        return True


class BandAttention(torch.autograd.Function):
    """The blocked path's local rows: softmax(q k^T * scaling + bias) v over the band, with dropout.

    Autograd would allocate five score-sized tensors per layer (scores, softmax, dropout and their
    gradients) and pad, slice and concatenate the blocks; this allocates two score-sized tensors in forward
    and one in backward, and folds the block gradients back in one pass each. On CPU a fresh tensor of that
    size costs more in page faults than the softmax computed into it.
    Inputs: q, k, v (B, H, L, D); bias (B * N, 1, C, K) with K = 3C + G, 0 or -inf; row_empty (B, N, 1, C, 1)
    bool; drop None or (B * N, H, C, K) bool; index (B, H, G, D) long. Returns (B, L, H, D).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, row_empty, drop, index, scaling, dropout_p):
        batch_size, num_heads, length, head_dim = q.shape
        num_blocks, block = row_empty.shape[1], row_empty.shape[3]
        # Scale q (L x D entries) rather than the scores (L x K); the same for dropout's 1 / (1 - p) on v.
        q_blocks = blocks_of(q, block, num_blocks, margin=0).mul_(scaling)  # (B, N, H, C, D)
        q_blocks = q_blocks.view(batch_size * num_blocks, num_heads, block, head_dim)  # (B * N, H, C, D)
        keys = keys_of_blocks(k, index, block, num_blocks)  # (B * N, H, K, D)
        values = keys_of_blocks(v, index, block, num_blocks)  # (B * N, H, K, D)
        value_scale = 1 / (1 - dropout_p) if drop is not None else 1.0
        values.mul_(value_scale)
        probs = softmax_(torch.matmul(q_blocks, keys.transpose(-1, -2)).add_(bias))  # (B * N, H, C, K)
        dropped = probs if drop is None else probs.masked_fill(drop, 0.0)
        out = torch.matmul(dropped, values)  # (B * N, H, C, D)
        # A query without any allowed key (padding far from any token) outputs 0, as in the eager reference.
        out = out.view(batch_size, num_blocks, num_heads, block, head_dim).masked_fill_(row_empty, 0.0)
        ctx.save_for_backward(q_blocks, keys, values, probs, dropped, drop, index, row_empty)
        ctx.scaling, ctx.value_scale, ctx.length = scaling, value_scale, length
        # (B, N, H, C, D) -> (B, N * C, H, D) -> (B, L, H, D)
        out = out.transpose(2, 3).reshape(batch_size, num_blocks * block, num_heads, head_dim)
        return out[:, :length]

    @staticmethod
    @once_differentiable  # the backward works in place: no double backward
    def backward(ctx, grad_out):
        q_blocks, keys, values, probs, dropped, drop, index, row_empty = ctx.saved_tensors
        batch_size, num_blocks, _, block, _ = row_empty.shape
        num_heads, head_dim = q_blocks.shape[1], q_blocks.shape[3]
        grad_out = blocks_of(grad_out.transpose(1, 2), block, num_blocks, margin=0)  # (B, N, H, C, D)
        grad_out = grad_out.masked_fill_(row_empty, 0.0).view_as(q_blocks)  # (B * N, H, C, D)
        grad_values = torch.matmul(dropped.transpose(-1, -2), grad_out)  # (B * N, H, K, D)
        grad_values.mul_(ctx.value_scale)
        # Unless the graph is kept for another backward, the saved tensors die here: reuse their memory
        # (a fresh score-sized tensor costs as much in page faults as the matmul that fills it).
        kept = graph_is_kept()
        # (B * N, H, C, K); `dropped` is `probs` itself without dropout, and softmax's backward needs that.
        grad = torch.matmul(grad_out, values.transpose(-1, -2), out=None if kept or drop is None else dropped)
        if drop is not None:
            grad.masked_fill_(drop, 0.0)
        grad = softmax_backward_(grad, probs)
        grad_q = torch.matmul(grad, keys).mul_(ctx.scaling)  # (B * N, H, C, D)
        grad_q = grad_q.view(batch_size, num_blocks, num_heads, block, head_dim).transpose(1, 2)
        grad_q = grad_q.reshape(batch_size, num_heads, num_blocks * block, head_dim)[:, :, : ctx.length]
        # (B * N, H, K, D)
        grad_keys = torch.matmul(grad.transpose(-1, -2), q_blocks, out=None if kept else keys)
        grad_k = fold_keys(grad_keys, index, block, ctx.length)  # (B, H, L, D)
        grad_v = fold_keys(grad_values, index, block, ctx.length)  # (B, H, L, D)
        return grad_q, grad_k, grad_v, None, None, None, None, None, None


def band_attention(q, k, v, pattern, scaling, dropout_p):
    """Local blocks plus global columns, for the rows of local tokens. Returns (B, L, H, D).

    Each block of C queries attends to its own and the two neighbouring key blocks plus the global keys
    (`BandAttention`: batched matmuls over B * N small problems, the structure as an additive bias shared by
    all heads). The rows of global tokens come out wrong here and are replaced by `global_rows_attention`.
    """
    batch_size, num_heads, length, head_dim = q.shape
    num_blocks, block = pattern.mask.row_empty.shape[1], pattern.mask.row_empty.shape[3]
    index = pattern.global_index.clamp(max=length - 1)[:, None, :, None].expand(-1, num_heads, -1, head_dim)
    drop = None
    if dropout_p > 0:
        shape = (batch_size * num_blocks, num_heads, block, pattern.mask.bias.shape[-1])
        drop = dropout_mask(shape, dropout_p, q.device)
    return BandAttention.apply(
        q, k, v, pattern.mask.bias, pattern.mask.row_empty, drop, index, scaling, dropout_p
    )


class GlobalRowsAttention(torch.autograd.Function):
    """The rows of the global tokens, each over every non-padding key, computed in place as in
    `BandAttention`. Inputs: q, k, v (B, H, L, D); index (B, H, G, D) long; key_bias (B, 1, 1, L) 0 or -inf,
    with rows that have no key at all opened; drop None or (B, H, G, L) bool. Returns (B, H, G, D).
    """

    @staticmethod
    def forward(ctx, q, k, v, index, key_bias, drop, scaling, dropout_p):
        q_rows = q.gather(2, index).mul_(scaling)  # (B, H, G, D)
        probs = softmax_(torch.matmul(q_rows, k.transpose(-1, -2)).add_(key_bias))  # (B, H, G, L)
        dropped = probs if drop is None else probs.masked_fill(drop, 0.0)
        value_scale = 1 / (1 - dropout_p) if drop is not None else 1.0
        ctx.save_for_backward(q_rows, k, v, probs, dropped, drop, index)
        ctx.scaling, ctx.value_scale = scaling, value_scale
        return torch.matmul(dropped, v).mul_(value_scale)  # (B, H, G, D)

    @staticmethod
    @once_differentiable  # the backward works in place: no double backward
    def backward(ctx, grad_out):
        q_rows, k, v, probs, dropped, drop, index = ctx.saved_tensors
        grad_out = grad_out * ctx.value_scale  # (B, H, G, D)
        grad_v = torch.matmul(dropped.transpose(-1, -2), grad_out)  # (B, H, L, D)
        grad = torch.matmul(grad_out, v.transpose(-1, -2))  # (B, H, G, L)
        if drop is not None:
            grad.masked_fill_(drop, 0.0)
        grad = softmax_backward_(grad, probs)
        grad_k = torch.matmul(grad.transpose(-1, -2), q_rows)  # (B, H, L, D)
        grad_rows = torch.matmul(grad, k).mul_(ctx.scaling)  # (B, H, G, D)
        # Empty slots point at L - 1 with zero gradient.
        grad_q = torch.zeros_like(grad_k).scatter_add_(2, index, grad_rows)  # (B, H, L, D)
        return grad_q, grad_k, grad_v, None, None, None, None, None


def global_rows_attention(q, k, v, pattern, scaling, dropout_p):
    """Rows of the global tokens: each attends to every non-padding key. Returns (B, G, H, D)."""
    batch_size, num_heads, length, head_dim = q.shape
    index = pattern.global_index.clamp(max=length - 1)[:, None, :, None].expand(-1, num_heads, -1, head_dim)
    # A sequence of padding alone has no key: open its rows (softmax of -inf rows is NaN), then zero them.
    has_key = pattern.key_ok.any(dim=1)[:, None]  # (B, 1)
    key_bias = torch.zeros(batch_size, 1, 1, length, dtype=q.dtype, device=q.device)
    key_bias.masked_fill_((~pattern.key_ok & has_key)[:, None, None, :], -math.inf)  # (B, 1, 1, L)
    drop = None
    if dropout_p > 0:
        drop = dropout_mask((batch_size, num_heads, index.shape[2], length), dropout_p, q.device)
    out = GlobalRowsAttention.apply(q, k, v, index, key_bias, drop, scaling, dropout_p)  # (B, H, G, D)
    out = out.masked_fill(~has_key[:, :, None, None], 0.0)
    return out.transpose(1, 2)  # (B, G, H, D)


def replace_rows(out: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Put `rows` (B, G, H, D) into `out` (B, L, H, D) at positions `index` (B, G); index L is a dropped slot."""
    batch_size, length, num_heads, head_dim = out.shape
    padded = torch.cat([out, out.new_zeros(batch_size, 1, num_heads, head_dim)], dim=1)  # (B, L + 1, H, D)
    index = index[:, :, None, None].expand(-1, -1, num_heads, head_dim)  # (B, G, H, D)
    return padded.scatter(1, index, rows)[:, :length]  # (B, L, H, D)


def with_global_rows(
    out: torch.Tensor,
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    pattern: AttentionPattern,
    scaling: float,
    dropout: float,
) -> torch.Tensor:
    """`out` (B, L, H, D) with the rows of the global tokens recomputed from `qkv`, each over every key."""
    rows = global_rows_attention(*qkv, pattern, scaling, dropout)  # (B, G, H, D)
    return replace_rows(out, rows, pattern.global_index)


def blocked_structure_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: AttentionPattern,
    scaling: float,
    dropout: float = 0.0,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, None]:
    """Linear cost: the band for the rows of local tokens, then the rows of global tokens over all keys."""
    out = band_attention(query, key, value, pattern, scaling, dropout)  # (B, L, H, D)
    rows_qkv = global_qkv if global_qkv is not None else (query, key, value)
    out = with_global_rows(out, rows_qkv, pattern, scaling, dropout)
    return out, None


# --------------------------------------------------------------------------------------------------------------
# The registries
# --------------------------------------------------------------------------------------------------------------


class StructBertAttentionInterface(AttentionInterface):
    """StructBERT's attention paths by name: transformers' `AttentionInterface`, with a mapping of its own because
    every path here takes the structure pattern (see the signature above `eager_structure_attention`) rather
    than transformers' attention mask. Add a path with `StructBertAttentionInterface.register("name", path)`
    (and its mask with `StructBertMaskInterface.register`), then load or set the model with
    `attn_implementation="name"`.
    """

    _global_mapping = {
        "eager": eager_structure_attention,
        "sdpa": sdpa_structure_attention,
        "flex_attention": flex_structure_attention,
        "blocked": blocked_structure_attention,
    }


class StructBertMaskInterface(GeneralInterface):
    """The mask builder of each attention path (`builder(pattern) -> mask`), as transformers'
    `AttentionMaskInterface` pairs mask functions with attention functions. A path without one gets `dense_mask`."""

    _global_mapping = {
        "eager": dense_mask,
        "sdpa": sdpa_mask,
        "flex_attention": flex_block_mask,
        "blocked": band_mask,
    }


ALL_ATTENTION_FUNCTIONS = StructBertAttentionInterface()
ALL_MASK_FUNCTIONS = StructBertMaskInterface()

# "auto", per layer: the first registered path whose condition holds for (length, window, device, dropout).
# On CUDA without attention dropout, FlexAttention (compiled by transformers, sparse blocks; it has no dropout);
# otherwise the blocked path when the dense scores would be more than 4/3 of the band's (L > 2W), else one dense
# SDPA call, which beats the blocked path's gathers and copies at that size. Insert an entry to make "auto"
# prefer a path of your own.
AUTO_RULE: list[tuple[str, Callable[[int, int, torch.device, float], bool]]] = [
    ("flex_attention", lambda length, window, device, dropout: device.type == "cuda" and dropout == 0),
    ("blocked", lambda length, window, device, dropout: length > 2 * window),
    ("sdpa", lambda length, window, device, dropout: True),
]


def auto_implementation(length: int, window: int, device: torch.device | str, dropout: float = 0.0) -> str:
    """The path "auto" uses for `length` tokens, a `window`, on `device`, with attention `dropout` (`AUTO_RULE`)."""
    for name, applies in AUTO_RULE:
        if name in ALL_ATTENTION_FUNCTIONS and applies(length, window, torch.device(device), dropout):
            return name
    return "eager"
