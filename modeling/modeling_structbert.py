"""StructBERT: a BERT encoder whose self-attention is local for ordinary tokens and global for the tokens of
a document's structure (title, section headings, optionally [CLS]).

This file is Hub remote code: it imports only torch, transformers and (relatively) its configuration.

Notation used in the shape comments:
    B  batch size          L  sequence length      E  hidden size (H * D)
    H  attention heads     D  head dimension       W  attention window (total width, even)
    C  block size of the blocked path, W / 2       N  number of query blocks, ceil(L / C)
    G  global tokens per row, padded to the largest count in the batch
    M  mentions per row (mention classification), padded to the largest count in the batch

Attention definition: query i may attend to key j iff j is not padding and (i is global, or j is global, or
|i - j| <= W / 2 and (scope is "window" or section_ids[i] == section_ids[j])). A row with no allowed key
(e.g. a padding query far from any real token) outputs zeros. `structure_mask_function` writes this rule
once; every mask (dense, FlexAttention's mask_mod, the blocked path's band bias) is derived from it.

Attention implementations, chosen with ``attn_implementation=`` in ``from_pretrained``/``from_config`` and
looked up in `ALL_ATTENTION_FUNCTIONS` (a `StructBertAttentionInterface`; register your own path there):
    "eager"           dense reference: softmax over the allowed keys of a dense (B, H, L, L) score matrix.
                      It *is* the definition; every other path is tested against it.
    "sdpa"            torch's scaled_dot_product_attention with a dense boolean (B, 1, L, L) mask.
    "flex_attention"  FlexAttention with a BlockMask (compiled through transformers on GPU). On CPU it runs
                      uncompiled and torch has no FlexAttention backward there: CPU use is inference only.
    "blocked"         linear cost: query blocks of C = W / 2 tokens attend (batched matmuls, the structure as
                      an additive bias) to their own and the two neighbouring key blocks plus the global
                      keys; the rows of global tokens attend to all keys. Works with autograd on CPU.
    "auto"            what the model uses when no implementation is requested: per layer, "blocked" when
                      L > 2 * W, else "sdpa" (up to 2 * W the dense scores are at most 4/3 of the band's,
                      and one dense call beats the blocked path's gathers and copies).

With ``output_attentions=True`` every layer runs the eager math (dense memory) whatever the implementation,
and ``attentions`` holds one (B, H, L, L) tensor per layer: probabilities that sum to 1 over the allowed keys
of each row and are exactly 0 elsewhere.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import AttentionInterface, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.integrations.flex_attention import flex_attention_forward
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .configuration_structbert import StructBertConfig

MaskFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StructBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout (as in BERT)."""

    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = StructBertDropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, length = inputs_embeds.shape[:2]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"input length {length} exceeds max_position_embeddings ({self.position_embeddings.num_embeddings})"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device)[None, :]  # (1, L)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch_size, length, dtype=torch.long, device=inputs_embeds.device)
        embeddings = (
            inputs_embeds
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


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
    """The structure mask of one window, in the form its attention path needs. Built once per forward."""

    implementation: str  # a key of ALL_ATTENTION_FUNCTIONS
    window: int
    key_ok: torch.Tensor  # (B, L) bool: the key is not padding
    is_global: torch.Tensor  # (B, L) bool
    global_index: torch.Tensor  # (B, G) long: positions of the global tokens, in order; L marks an empty slot
    may_attend: MaskFunction  # the rule (`structure_mask_function`), for paths that build their own mask
    # eager and registered paths: (B, 1, L, L) bool, query i may attend key j; sdpa: the same with key-less rows
    # opened.
    allowed: torch.Tensor | None = None
    row_has_key: torch.Tensor | None = None  # sdpa: (B, L, 1, 1) bool, the row has an allowed key
    block_mask: object | None = None  # flex_attention: the BlockMask
    # blocked: (B * N, 1, C, 3C + G) float, 0 where a query block may attend a key and -inf elsewhere
    # (key-less rows opened), shared by the heads and by the layers of this window; and (B, N, 1, C, 1) bool,
    # the queries without any allowed key.
    band_bias: torch.Tensor | None = None
    band_row_empty: torch.Tensor | None = None


def build_attention_pattern(
    implementation: str,
    window: int,
    key_ok: torch.Tensor,
    is_global: torch.Tensor,
    section_ids: torch.Tensor | None,
) -> AttentionPattern:
    """Turn padding, global and section information into the mask of one attention path: FlexAttention's
    BlockMask, the blocked path's band bias, and for every other path the dense mask.

    `section_ids` is None for the "window" scope; then locality is position distance alone.
    """
    batch_size, length = key_ok.shape
    device = key_ok.device
    counts = is_global.sum(dim=1)  # (B,)
    num_global = int(counts.max()) if length > 0 else 0
    # A stable sort on "not global" puts the global positions first, in document order.
    order = torch.argsort((~is_global).to(torch.int8), dim=1, stable=True)[:, :num_global]  # (B, G)
    slot_used = torch.arange(num_global, device=device)[None, :] < counts[:, None]  # (B, G)
    global_index = torch.where(slot_used, order, length)  # (B, G)
    may_attend = structure_mask_function(window, key_ok, is_global, section_ids)
    pattern = AttentionPattern(implementation, window, key_ok, is_global, global_index, may_attend)

    if implementation == "flex_attention":
        # Imported here: FlexAttention is a prototype API that older torch builds lack, and only this path needs it.
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q_idx, kv_idx):
            return may_attend(b, q_idx, kv_idx)

        pattern.block_mask = create_block_mask(mask_mod, batch_size, None, length, length, device=device)
    elif implementation == "blocked":
        block = window // 2
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
        band_key = in_range & ~is_global[batch, k_idx]  # (B, N, 1, 3C)
        band = may_attend(batch, q_idx, k_idx) & band_key  # (B, N, C, 3C)
        global_key = global_index.clamp(max=length - 1)[:, None, None, :]  # (B, 1, 1, G)
        global_columns = may_attend(batch, q_idx, global_key) & slot_used[:, None, None, :]  # (B, N, C, G)
        band = torch.cat([band, global_columns], dim=-1)  # (B, N, C, 3C + G)
        row_empty = ~band.any(dim=-1, keepdim=True)  # (B, N, C, 1)
        # Softmax over a row of -inf is NaN: open key-less rows, then zero their output. -inf (not finfo.min)
        # is exact in every float dtype the scores may have, and every row keeps at least one finite entry.
        band = (band | row_empty).view(batch_size * num_blocks, 1, block, -1)  # (B * N, 1, C, 3C + G)
        pattern.band_bias = torch.zeros(band.shape, device=device).masked_fill_(~band, -math.inf)
        pattern.band_row_empty = row_empty[:, :, None]  # (B, N, 1, C, 1)
    else:
        batch = torch.arange(batch_size, device=device)[:, None, None]  # (B, 1, 1)
        positions = torch.arange(length, device=device)
        allowed = may_attend(batch, positions[None, :, None], positions[None, None, :])  # (B, L, L)
        pattern.allowed = allowed[:, None]  # (B, 1, L, L)
        if implementation == "sdpa":
            pattern.row_has_key = allowed.any(dim=-1)[:, :, None, None]  # (B, L, 1, 1)
            # SDPA returns NaN for a row without any allowed key: open such rows, then zero their output.
            pattern.allowed = pattern.allowed | ~pattern.row_has_key.transpose(1, 2)
    return pattern


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
    probs = masked_softmax(query @ key.transpose(-1, -2) * scaling, pattern.allowed)  # (B, H, L, L)
    if global_qkv is None:
        out = fast_dropout(probs, dropout) @ value  # (B, H, L, D)
        return out.transpose(1, 2), probs
    q_global, k_global, v_global = global_qkv
    # A global row may attend every non-padding key, which is exactly what `allowed` says for that row.
    probs_global = masked_softmax(q_global @ k_global.transpose(-1, -2) * scaling, pattern.allowed)
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
        module, query, key, value, pattern.allowed, dropout=dropout, scaling=scaling, is_causal=False
    )
    out = out * pattern.row_has_key  # (B, L, H, D)
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

        out = flex_attention(query, key, value, block_mask=pattern.block_mask, scale=scaling).transpose(1, 2)
    else:
        out, _ = flex_attention_forward(module, query, key, value, pattern.block_mask, scaling=scaling)
    if global_qkv is not None:
        out = with_global_rows(out, global_qkv, pattern, scaling, dropout)
    return out, None  # (B, L, H, D)


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
    num_blocks, block = pattern.band_row_empty.shape[1], pattern.band_row_empty.shape[3]
    index = pattern.global_index.clamp(max=length - 1)[:, None, :, None].expand(-1, num_heads, -1, head_dim)
    drop = None
    if dropout_p > 0:
        shape = (batch_size * num_blocks, num_heads, block, pattern.band_bias.shape[-1])
        drop = dropout_mask(shape, dropout_p, q.device)
    return BandAttention.apply(
        q, k, v, pattern.band_bias, pattern.band_row_empty, drop, index, scaling, dropout_p
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


class StructBertAttentionInterface(AttentionInterface):
    """StructBERT's attention paths by name: transformers' `AttentionInterface`, with a mapping of its own because
    every path here takes the structure pattern (see the signature above `eager_structure_attention`) rather
    than transformers' attention mask. Add a path with `StructBertAttentionInterface.register("name", path)`,
    then load or set the model with `attn_implementation="name"`; it gets the dense mask, as eager does
    (`pattern.allowed`), and the rule itself (`pattern.may_attend`).
    """

    _global_mapping = {
        "eager": eager_structure_attention,
        "sdpa": sdpa_structure_attention,
        "flex_attention": flex_structure_attention,
        "blocked": blocked_structure_attention,
    }


# Named as in transformers: `set_attn_implementation` only works for models whose source shows
# `ALL_ATTENTION_FUNCTIONS.get_interface(` (the sign that attention is looked up by name).
ALL_ATTENTION_FUNCTIONS = StructBertAttentionInterface()


class StructBertSelfAttention(nn.Module):
    """Multi-head self-attention restricted to the structure pattern (see the module docstring)."""

    def __init__(self, config: StructBertConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.separate_global_projections = config.separate_global_projections
        if self.separate_global_projections:
            self.query_global = nn.Linear(config.hidden_size, config.hidden_size)
            self.key_global = nn.Linear(config.hidden_size, config.hidden_size)
            self.value_global = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = StructBertDropout(config.attention_probs_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, pattern: AttentionPattern
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, hidden_size = hidden_states.shape

        def split_heads(x):
            return x.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)

        q = split_heads(self.query(hidden_states))
        k = split_heads(self.key(hidden_states))
        v = split_heads(self.value(hidden_states))
        global_qkv = None
        if self.separate_global_projections:
            # Global rows use their own projections (Longformer).
            global_qkv = tuple(
                split_heads(projection(hidden_states))
                for projection in (self.query_global, self.key_global, self.value_global)
            )
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(pattern.implementation, eager_structure_attention)
        out, probs = attention(
            self,
            q,
            k,
            v,
            pattern,
            scaling=self.scaling,
            dropout=self.dropout.p if self.training else 0.0,
            global_qkv=global_qkv,
        )
        return out.reshape(batch_size, length, hidden_size), probs  # (B, L, E)


class StructBertSelfOutput(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = StructBertDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class StructBertAttention(nn.Module):
    def __init__(self, config: StructBertConfig, layer_idx: int):
        super().__init__()
        self.self = StructBertSelfAttention(config, layer_idx)
        self.output = StructBertSelfOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, pattern: AttentionPattern
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, probs = self.self(hidden_states, pattern)
        return self.output(attention_output, hidden_states), probs


class StructBertIntermediate(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class StructBertOutput(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = StructBertDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class StructBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: StructBertConfig, layer_idx: int):
        super().__init__()
        self.attention = StructBertAttention(config, layer_idx)
        self.intermediate = StructBertIntermediate(config)
        self.output = StructBertOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, pattern: AttentionPattern
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, probs = self.attention(hidden_states, pattern)
        return self.output(self.intermediate(attention_output), attention_output), probs


class StructBertEncoder(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([StructBertLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        patterns: list[AttentionPattern],
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer, pattern in zip(self.layer, patterns):
            hidden_states, probs = layer(hidden_states, pattern)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class StructBertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS])), as in BERT."""

    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class StructBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class StructBertLMPredictionHead(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.transform = StructBertPredictionHeadTransform(config)
        # The decoder weight is tied to the word embeddings; the bias is an output-only parameter.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class StructBertOnlyMLMHead(nn.Module):
    def __init__(self, config: StructBertConfig):
        super().__init__()
        self.predictions = StructBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class StructBertPreTrainedModel(PreTrainedModel):
    config_class = StructBertConfig
    base_model_prefix = "structbert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _no_split_modules = ["StructBertEmbeddings", "StructBertLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, StructBertLMPredictionHead):
            init.zeros_(module.bias)

    def get_correct_attn_implementation(
        self, requested_attention: str | None, is_init_check: bool = False
    ) -> str:
        """Accept "auto" and every path in `ALL_ATTENTION_FUNCTIONS`; with none requested, use "auto"."""
        if requested_attention is None:
            return "auto"
        if requested_attention != "auto" and requested_attention not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"StructBERT supports attn_implementation in {[*ALL_ATTENTION_FUNCTIONS, 'auto']}, "
                f"got {requested_attention!r}"
            )
        if requested_attention in ("eager", "sdpa", "flex_attention"):
            # transformers checks that torch and the device support them (it raises for FlexAttention without torch's).
            return super().get_correct_attn_implementation(requested_attention, is_init_check)
        return requested_attention

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes only the saved class's own `auto_map` entry; listing every head lets any Auto
        # class load any StructBERT checkpoint (e.g. AutoModel on a masked-LM checkpoint).
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


class StructBertModel(StructBertPreTrainedModel):
    """The bare encoder. The pooler (tanh(dense([CLS]))) feeds sequence classification."""

    def __init__(self, config: StructBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = StructBertEmbeddings(config)
        self.encoder = StructBertEncoder(config)
        self.pooler = StructBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        section_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | BaseModelOutputWithPooling:
        r"""
        attention_mask (`(B, L)`): 1 for tokens, 0 for padding.
        global_attention_mask (`(B, L)`): 1 for global tokens (the structure), 0 for local ones. Position 0
            is global as well when `"cls"` is in `config.global_attention_types`.
        section_ids (`(B, L)` long): tokens with the same id are in the same section; required when
            `config.local_attention_scope == "section"`, ignored otherwise.
        """
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}, expected (B, L)")
        if inputs_embeds is not None and inputs_embeds.dim() != 3:
            raise ValueError(f"inputs_embeds has shape {tuple(inputs_embeds.shape)}, expected (B, L, E)")
        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)

        patterns = self._attention_patterns(
            embedding_output.shape[:2],
            embedding_output.device,
            attention_mask,
            global_attention_mask,
            section_ids,
            bool(output_attentions),
        )
        outputs = self.encoder(
            embedding_output, patterns, bool(output_attentions), bool(output_hidden_states)
        )
        sequence_output = outputs.last_hidden_state
        outputs.pooler_output = self.pooler(sequence_output) if self.pooler is not None else None
        return outputs if return_dict else outputs.to_tuple()

    def _attention_patterns(
        self,
        shape: tuple[int, int],
        device: torch.device,
        attention_mask: torch.Tensor | None,
        global_attention_mask: torch.Tensor | None,
        section_ids: torch.Tensor | None,
        output_attentions: bool,
    ) -> list[AttentionPattern]:
        """Build the masks once per distinct window, for all layers, from padding, structure and sections."""
        batch_size, length = shape
        # Every path sees the same checked (B, L) inputs: a (1, L) mask would broadcast in the dense paths only.
        inputs = {
            "attention_mask": attention_mask,
            "global_attention_mask": global_attention_mask,
            "section_ids": section_ids,
        }
        for name, tensor in inputs.items():
            if tensor is not None and tuple(tensor.shape) != (batch_size, length):
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}, expected (B, L) = ({batch_size}, {length}), "
                    "the batch size and length of input_ids (or inputs_embeds)"
                )
        if self.config.local_attention_scope == "section":
            if section_ids is None:
                raise ValueError(
                    'config.local_attention_scope="section" needs section_ids, shape (B, L) '
                    f"= ({batch_size}, {length}): tokens with the same id are in the same section"
                )
            section_ids = section_ids.to(device)
        else:
            section_ids = None
        key_ok = (
            attention_mask.to(device=device, dtype=torch.bool)
            if attention_mask is not None
            else torch.ones(batch_size, length, dtype=torch.bool, device=device)
        )
        is_global = (
            global_attention_mask.to(device=device, dtype=torch.bool)
            if global_attention_mask is not None
            else torch.zeros(batch_size, length, dtype=torch.bool, device=device)
        )
        if "cls" in self.config.global_attention_types:
            is_global = is_global.clone()
            is_global[:, 0] = True

        implementation = "eager" if output_attentions else (self.config._attn_implementation or "auto")
        patterns: dict[int, AttentionPattern] = {}
        for layer_idx in range(self.config.num_hidden_layers):
            window = self.config.layer_window(layer_idx)
            if window not in patterns:
                chosen = implementation
                if chosen == "auto":
                    chosen = "blocked" if length > 2 * window else "sdpa"
                patterns[window] = build_attention_pattern(chosen, window, key_ok, is_global, section_ids)
        return [patterns[self.config.layer_window(i)] for i in range(self.config.num_hidden_layers)]


class StructBertTaskModel(StructBertPreTrainedModel):
    """The forward the task heads share: the encoder, then the head's `task_output` (its logits and its loss).
    The signature names every input, so the Trainer keeps every input column of a dataset."""

    structbert: StructBertModel
    task_output: Callable[[BaseModelOutputWithPooling, torch.Tensor | None], ModelOutput]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        section_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | ModelOutput:
        r"""Inputs as in `StructBertModel.forward`; `labels` as in the head's `task_output`."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.structbert(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            section_ids=section_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        output = self.task_output(outputs, labels)
        return output if return_dict else output.to_tuple()


class StructBertForMaskedLM(StructBertTaskModel):
    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "structbert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: StructBertConfig):
        super().__init__(config)
        self.structbert = StructBertModel(config, add_pooling_layer=False)
        self.cls = StructBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def task_output(self, outputs: BaseModelOutputWithPooling, labels: torch.Tensor | None) -> MaskedLMOutput:
        r"""labels (`(B, L)` long): token ids to predict; -100 (padding, unmasked tokens) is ignored."""
        logits = self.cls(outputs.last_hidden_state)  # (B, L, vocab)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class StructBertForSequenceClassification(StructBertTaskModel):
    """Pooled [CLS] -> dropout -> linear. [CLS] is global under the default `global_attention_types`."""

    def __init__(self, config: StructBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.structbert = StructBertModel(config)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def task_output(
        self, outputs: BaseModelOutputWithPooling, labels: torch.Tensor | None
    ) -> SequenceClassifierOutput:
        r"""labels (`(B,)`): class ids, regression targets (num_labels == 1) or multi-hot floats."""
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            problem_type = self.config.problem_type
            if problem_type is None:
                if self.num_labels == 1:
                    problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    problem_type = "single_label_classification"
                else:
                    problem_type = "multi_label_classification"
            if problem_type == "regression":
                loss = MSELoss()(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            elif problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class StructBertForTokenClassification(StructBertTaskModel):
    """Per-token dropout -> linear (e.g. NER tags)."""

    def __init__(self, config: StructBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.structbert = StructBertModel(config, add_pooling_layer=False)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def task_output(
        self, outputs: BaseModelOutputWithPooling, labels: torch.Tensor | None
    ) -> TokenClassifierOutput:
        r"""labels (`(B, L)` long): tag ids; -100 (padding, sub-word continuations) is ignored."""
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@dataclass
class MentionClassifierOutput(ModelOutput):
    r"""Output of `StructBertForMentionClassification`.

    loss (`()`): cross-entropy over the real mentions (label -100 is ignored), when labels are given.
    logits (`(B, M, num_labels)`): one row of scores per mention span.
    hidden_states, attentions: as in `BaseModelOutputWithPooling`, when asked for.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class StructBertForMentionClassification(StructBertPreTrainedModel):
    """Classify word spans of a window (e.g. is this mention of a salient entity?): each span is the mean of
    its sub-token states -> dropout -> linear.

    `mention_spans` (`(B, M, 2)` long) are `[start, end)` token positions in the row; a padded mention has an
    empty span (its pooled state is 0) and label -100. A checkpoint saved from this class lists it in
    `architectures`, so `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the head with it.
    """

    def __init__(self, config: StructBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.structbert = StructBertModel(config, add_pooling_layer=False)
        dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        mention_spans: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        section_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | MentionClassifierOutput:
        r"""Inputs as in `StructBertModel.forward`; `mention_spans` as in the class docstring; labels (`(B, M)`
        long): class ids, -100 for padded mentions."""
        if mention_spans is None:
            raise ValueError("StructBertForMentionClassification needs mention_spans, (B, M, 2) [start, end)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.structbert(
            input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
            section_ids=section_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = outputs.last_hidden_state  # (B, L, E)
        if (
            mention_spans.ndim != 3
            or mention_spans.shape[0] != hidden.shape[0]
            or mention_spans.shape[-1] != 2
        ):
            raise ValueError(
                f"mention_spans must be (B, M, 2) with B = {hidden.shape[0]}, got {tuple(mention_spans.shape)}"
            )
        positions = torch.arange(hidden.shape[1], device=hidden.device)  # (L,)
        inside = (positions >= mention_spans[..., :1]) & (positions < mention_spans[..., 1:])  # (B, M, L)
        weights = inside.to(hidden.dtype)
        pooled = weights @ hidden / weights.sum(-1, keepdim=True).clamp(min=1.0)  # (B, M, E)
        logits = self.classifier(self.dropout(pooled))  # (B, M, num_labels)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
        output = MentionClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # AutoModel on a mention-classification checkpoint loads this head (its `architectures` entry), in a
        # process with this package (modeling/__init__) as through remote code.
        self.config.auto_map = {
            **AUTO_MAP,
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModel": "modeling_structbert.StructBertForMentionClassification",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


AUTO_MAP = {
    "AutoConfig": "configuration_structbert.StructBertConfig",
    "AutoModel": "modeling_structbert.StructBertModel",
    "AutoModelForMaskedLM": "modeling_structbert.StructBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_structbert.StructBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_structbert.StructBertForTokenClassification",
}

# `save_pretrained` copies both files and writes `auto_map`, so the folder loads with trust_remote_code=True.
StructBertConfig.register_for_auto_class()
StructBertModel.register_for_auto_class("AutoModel")
StructBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
StructBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
StructBertForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
# transformers has no Auto class for span classification: a mention-classification checkpoint maps AutoModel to it.
StructBertForMentionClassification.register_for_auto_class("AutoModel")

__all__ = [
    "MentionClassifierOutput",
    "StructBertAttentionInterface",
    "StructBertForMaskedLM",
    "StructBertForMentionClassification",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "StructBertPreTrainedModel",
]
