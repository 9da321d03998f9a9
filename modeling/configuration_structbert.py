"""StructBERT configuration: BERT's fields plus the structure-driven local/global attention pattern."""

from transformers import PreTrainedConfig

LOCAL_ATTENTION_SCOPES = ("window", "section")
GLOBAL_ATTENTION_TYPES = ("cls", "title", "chapter", "section", "subsection", "subsubsection", "paragraph")
# The paper's structured setting: title and heading tokens are global, [CLS] is not (add "cls" for that).
DEFAULT_GLOBAL_ATTENTION_TYPES = ["title", "section", "subsection", "subsubsection"]
# Sizes that must be positive integers (what `@strict` checked in transformers' own configs).
POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


# transformers makes every PreTrainedConfig subclass a keyword-only dataclass of its annotated fields. Its own
# configs add huggingface_hub's `@strict` (type checks on assignment); remote code imports only torch and
# transformers, so the types and values are checked here, by `validate_structure`.
class StructBertConfig(PreTrainedConfig):
    r"""
    Configuration of a StructBERT model: a BERT encoder whose self-attention is local (a sliding window) for
    ordinary tokens and global for the tokens of a document's structure (title, headings, optionally `[CLS]`).

    Query i may attend to key j iff j is not padding and (i is global, or j is global, or
    |i - j| <= window/2 and (scope is "window" or section_ids[i] == section_ids[j])).

    Args:
        vocab_size (`int`, defaults to 30522): size of the token vocabulary.
        hidden_size (`int`, defaults to 768): width of the encoder layers.
        num_hidden_layers (`int`, defaults to 12): number of encoder layers.
        num_attention_heads (`int`, defaults to 12): attention heads per layer; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): width of the feed-forward layer.
        hidden_act (`str`, defaults to `"gelu"`): activation of the feed-forward layer and MLM transform.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on embeddings and residual branches.
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on attention probabilities.
        max_position_embeddings (`int`, defaults to 4096): longest input the position table covers.
        type_vocab_size (`int`, defaults to 2): number of token types (`token_type_ids`).
        initializer_range (`float`, defaults to 0.02): std of the normal weight initialisation.
        layer_norm_eps (`float`, defaults to 1e-12): epsilon of every LayerNorm.
        pad_token_id (`int`, defaults to 0): padding id (its embedding row gets no gradient).
        classifier_dropout (`float`, *optional*): dropout before the classification heads; falls back to
            `hidden_dropout_prob`.
        attention_window (`int` or `list[int]`, defaults to 256): total width of the local window, even; a
            token attends to +-window/2 (the Longformer convention). A list gives one window per layer.
        local_attention_scope (`str`, defaults to `"window"`): `"window"` (plain sliding window) or
            `"section"` (the window is also cut at section boundaries; needs `section_ids` as input).
        global_attention_types (`list[str]`, defaults to `["title", "section", "subsection",
            "subsubsection"]`, the paper's): the structural elements that become global tokens. The model
            reads `"cls"` (position 0 is always global, on request); the data pipeline reads the heading levels when it builds
            `global_attention_mask`. Allowed: `cls`, `title`, `chapter`, `section`, `subsection`,
            `subsubsection`, `paragraph`.
        separate_global_projections (`bool`, defaults to `False`): Longformer-style separate
            `query_global`/`key_global`/`value_global` projections for the rows of global tokens
            (needed to import Longformer weights exactly).
        tie_word_embeddings (`bool`, defaults to `True`): tie the MLM decoder to the word embeddings.
        sparse_prediction (`bool`, defaults to `False`): with `labels`, the masked-LM head projects only the
            positions whose label is not `sparse_pred_ignore_index` (ModernBERT's option): `logits` is then
            `(M, vocab_size)` for those M positions in row-major order, and `loss` their mean. A 4096-token row
            has ~15% masked positions, so this saves most of the head's memory and time; pre-training turns it
            on. Without labels the head always returns `(B, L, vocab_size)`.
        sparse_pred_ignore_index (`int`, defaults to -100): the label of positions that are not predicted.

    Example:

    ```python
    >>> config = StructBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, attention_window=8)
    >>> model = StructBertForMaskedLM(config)
    ```
    """

    model_type = "structbert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 4096
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    attention_window: int | list[int] = 256
    local_attention_scope: str = "window"
    global_attention_types: list[str] | None = None
    separate_global_projections: bool = False
    tie_word_embeddings: bool = True
    sparse_prediction: bool = False
    sparse_pred_ignore_index: int = -100

    def __post_init__(self, **kwargs):
        if self.global_attention_types is None:
            self.global_attention_types = list(DEFAULT_GLOBAL_ATTENTION_TYPES)
        super().__post_init__(**kwargs)
        self.validate_structure()

    def validate(self) -> None:
        """transformers' checks, then StructBERT's; `save_pretrained` calls this, so a field changed after
        construction is checked before it is written."""
        super().validate()
        self.validate_structure()

    def validate_structure(self) -> None:
        """Raise a ValueError naming the field when a size or the attention pattern is ill-defined."""
        for name in POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1
            ):
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        windows = self.attention_window
        if isinstance(windows, list):
            if len(windows) != self.num_hidden_layers:
                raise ValueError(
                    f"attention_window has {len(windows)} entries but num_hidden_layers is "
                    f"{self.num_hidden_layers}; give one window per layer or a single int"
                )
        else:
            windows = [windows]
        for window in windows:
            if isinstance(window, bool) or not isinstance(window, int) or window <= 0 or window % 2 != 0:
                raise ValueError(
                    f"attention_window must be a positive even number (a token attends to +-window/2), got {window}"
                )
        for name in ("separate_global_projections", "sparse_prediction"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.sparse_pred_ignore_index, bool) or not isinstance(
            self.sparse_pred_ignore_index, int
        ):
            raise ValueError(
                f"sparse_pred_ignore_index must be an integer, got {self.sparse_pred_ignore_index!r}"
            )
        if self.local_attention_scope not in LOCAL_ATTENTION_SCOPES:
            raise ValueError(
                f"local_attention_scope must be one of {LOCAL_ATTENTION_SCOPES}, got {self.local_attention_scope!r}"
            )
        unknown = [t for t in self.global_attention_types if t not in GLOBAL_ATTENTION_TYPES]
        if unknown:
            raise ValueError(
                f"global_attention_types has unknown entries {unknown}; allowed: {GLOBAL_ATTENTION_TYPES}"
            )

    def layer_window(self, layer_idx: int) -> int:
        """The attention window (total width) of layer `layer_idx`."""
        if isinstance(self.attention_window, list):
            return self.attention_window[layer_idx]
        return self.attention_window


__all__ = ["StructBertConfig"]
