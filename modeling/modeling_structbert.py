"""StructBERT: a BERT encoder whose self-attention is local for ordinary tokens and global for the tokens of
a document's structure (title, section headings, optionally [CLS]).

This file is Hub remote code: it imports only torch, transformers and (relatively) its configuration and its
attention kernels (`attention_structbert.py`: the structure mask, each path's mask builder, the paths).

Notation used in the shape comments:
    B  batch size          L  sequence length      E  hidden size (H * D)
    H  attention heads     D  head dimension       W  attention window (total width, even)
    M  mentions per row (mention classification), padded to the largest count in the batch

Attention definition: query i may attend to key j iff j is not padding and (i is global, or j is global, or
|i - j| <= W / 2 and (scope is "window" or section_ids[i] == section_ids[j])). A row with no allowed key
(e.g. a padding query far from any real token) outputs zeros. The masks are built once per forward, at the top
of the model (`StructBertModel._attention_patterns`), from padding and structure.

Attention implementations, chosen with ``attn_implementation=`` in ``from_pretrained``/``from_config`` and
looked up in `ALL_ATTENTION_FUNCTIONS` (register your own path, and its mask, in `attention_structbert`):
    "eager"           dense reference: softmax over the allowed keys of a dense (B, H, L, L) score matrix.
                      It *is* the definition; every other path is tested against it.
    "sdpa"            torch's scaled_dot_product_attention with a dense boolean (B, 1, L, L) mask.
    "flex_attention"  FlexAttention with a BlockMask (compiled through transformers on GPU). On CPU it runs
                      uncompiled and torch has no FlexAttention backward there: CPU use is inference only.
    "blocked"         linear cost: query blocks of W / 2 tokens attend (batched matmuls, the structure as
                      an additive bias) to their own and the two neighbouring key blocks plus the global
                      keys; the rows of global tokens attend to all keys. Works with autograd on CPU.
    "auto"            what the model uses when no implementation is requested, per layer (`AUTO_RULE`):
                      "flex_attention" on CUDA without attention dropout; else "blocked" when L > 2 * W, else
                      "sdpa" (up to 2 * W the dense scores are at most 4/3 of the band's, and one dense call
                      beats the blocked path's gathers and copies).

With ``output_attentions=True`` every layer runs the eager math (dense memory) whatever the implementation,
and ``attentions`` holds one (B, H, L, L) tensor per layer: probabilities that sum to 1 over the allowed keys
of each row and are exactly 0 elsewhere.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .attention_structbert import (
    ALL_ATTENTION_FUNCTIONS,
    AttentionPattern,
    StructBertDropout,
    auto_implementation,
    build_attention_pattern,
    eager_structure_attention,
)
from .configuration_structbert import StructBertConfig


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
        self._check_embedding_inputs(input_ids, inputs_embeds, token_type_ids, position_ids)
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

    def _check_embedding_inputs(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        """A ValueError naming the input, instead of an IndexError or a size mismatch deep in the embeddings."""
        name, tensor = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
        batch_size, length = tensor.shape[:2]
        if batch_size == 0 or length == 0:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}: at least one row of at least one token is needed"
            )
        # (1, L) broadcasts over the batch, as BERT's default position ids do.
        for other, value in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if value is not None and tuple(value.shape) not in ((batch_size, length), (1, length)):
                raise ValueError(
                    f"{other} has shape {tuple(value.shape)}, expected (B, L) = ({batch_size}, {length}) or (1, L)"
                )

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
                    dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
                    chosen = auto_implementation(length, window, device, dropout)
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
        r"""labels (`(B, L)` long): token ids to predict; -100 (padding, unmasked tokens) is ignored. With
        `config.sparse_prediction`, only the predicted positions go through the head (see the config)."""
        hidden = outputs.last_hidden_state  # (B, L, E)
        if labels is not None and self.config.sparse_prediction:
            predicted = labels != self.config.sparse_pred_ignore_index  # (B, L)
            hidden, labels = hidden[predicted], labels[predicted]  # (M, E), (M,)
        logits = self.cls(hidden)  # (B, L, vocab), or (M, vocab)
        loss = None
        if labels is not None:
            loss = CrossEntropyLoss(ignore_index=self.config.sparse_pred_ignore_index)(
                logits.view(-1, self.config.vocab_size).float(), labels.view(-1)
            )
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
    "StructBertForMaskedLM",
    "StructBertForMentionClassification",
    "StructBertForSequenceClassification",
    "StructBertForTokenClassification",
    "StructBertModel",
    "StructBertPreTrainedModel",
]
