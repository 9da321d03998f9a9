"""StructBERT: attention paths against the eager reference, structure properties, config, heads, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from structformer import (
    StructBertConfig,
    StructBertForMaskedLM,
    StructBertForMentionClassification,
    StructBertForSequenceClassification,
    StructBertForTokenClassification,
    StructBertModel,
)
from structformer.modeling import attention_structbert as msb

FAST_PATHS = ["sdpa", "blocked", "auto"]
# (name, config overrides): the pattern variants every path must reproduce.
VARIANTS = {
    "window": {},
    "section": {"local_attention_scope": "section"},
    "separate": {"separate_global_projections": True},
    "per_layer_no_cls": {"attention_window": [4, 32], "global_attention_types": ["title", "section"]},
    "section_separate_no_cls": {
        "local_attention_scope": "section",
        "separate_global_projections": True,
        "global_attention_types": ["section"],
        "attention_window": [2, 6],
    },
}


def expected_allowed(config: StructBertConfig, batch: dict, window: int) -> torch.Tensor:
    """The attention definition, written out element by element. Returns (B, L, L) bool."""
    key_ok = batch["attention_mask"].bool()
    is_global = batch["global_attention_mask"].bool().clone()
    if "cls" in config.global_attention_types:
        is_global[:, 0] = True
    size, length = key_ok.shape
    allowed = torch.zeros(size, length, length, dtype=torch.bool)
    for b in range(size):
        for i in range(length):
            for j in range(length):
                near = abs(i - j) <= window // 2
                if config.local_attention_scope == "section":
                    near = near and bool(batch["section_ids"][b, i] == batch["section_ids"][b, j])
                allowed[b, i, j] = bool(key_ok[b, j]) and (bool(is_global[b, i] or is_global[b, j]) or near)
    return allowed


def forward_backward(model: StructBertForMaskedLM, batch: dict, weights: torch.Tensor):
    """Logits, and gradients of a fixed linear loss w.r.t. the input embeddings and every parameter."""
    model.zero_grad()
    embeds = model.structbert.embeddings.word_embeddings(batch["input_ids"]).detach().requires_grad_()
    inputs = {k: v for k, v in batch.items() if k != "input_ids"}
    logits = model(inputs_embeds=embeds, **inputs).logits
    (logits * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), embeds.grad, grads


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_paths_match_eager_forward_and_backward(make_tiny_config, structured_batch, variant):
    torch.manual_seed(0)
    model = StructBertForMaskedLM(make_tiny_config(**VARIANTS[variant]))
    model.set_attn_implementation("eager")
    weights = torch.randn(4, 24, 99)
    ref_logits, ref_embed_grad, ref_grads = forward_backward(model, structured_batch, weights)
    assert ref_logits.isfinite().all() and ref_embed_grad.isfinite().all()
    for implementation in FAST_PATHS:
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        logits, embed_grad, grads = forward_backward(model, structured_batch, weights)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0, msg=implementation)
        torch.testing.assert_close(embed_grad, ref_embed_grad, atol=1e-5, rtol=0, msg=implementation)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            # A parameter's gradient sums over every position, in another order on each path: float32 rounding
            # grows with its size, so the tolerance is relative to the largest entry (token-type and MLM-transform
            # gradients reach ~1e2 here).
            scale = max(1.0, float(ref_grads[name].abs().max()))
            torch.testing.assert_close(
                grads[name], ref_grads[name], atol=1e-5 * scale, rtol=1e-5, msg=f"{implementation} {name}"
            )


@pytest.mark.parametrize("variant", ["section", "section_separate_no_cls"])
def test_flex_attention_matches_eager_forward(make_tiny_config, structured_batch, variant):
    """FlexAttention has no backward on CPU (torch raises), so on CPU only the forward is compared."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    model = StructBertForMaskedLM(make_tiny_config(**VARIANTS[variant])).eval()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        reference = model(**structured_batch).logits
        model.set_attn_implementation("flex_attention")
        logits = model(**structured_batch).logits
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)


def test_default_rule_picks_blocked_only_for_long_inputs(make_tiny_config):
    model = StructBertModel(make_tiny_config(attention_window=[4, 8]))
    assert model.config._attn_implementation == "auto"
    ones = torch.ones(1, 12, dtype=torch.bool)
    patterns = model._attention_patterns((1, 12), torch.device("cpu"), ones, None, None, False)
    assert [p.implementation for p in patterns] == ["blocked", "sdpa"]  # 12 > 2 * 4, 12 <= 2 * 8
    patterns = model._attention_patterns((1, 12), torch.device("cpu"), ones, None, None, True)
    assert [p.implementation for p in patterns] == [
        "eager",
        "eager",
    ]  # output_attentions needs the dense math


def band_as_dense(pattern: msb.AttentionPattern) -> torch.Tensor:
    """The keys the blocked path's band bias lets each query attend, as a dense (B, L, L) bool mask."""
    size, length = pattern.key_ok.shape
    num_blocks, block = pattern.mask.row_empty.shape[1], pattern.mask.row_empty.shape[3]
    allowed = (pattern.mask.bias == 0).view(size, num_blocks, block, -1)  # (B, N, C, 3C + G)
    allowed = allowed & ~pattern.mask.row_empty.view(size, num_blocks, block, 1)  # opened rows have no key
    k_pos = (torch.arange(num_blocks)[:, None] - 1) * block + torch.arange(3 * block)  # (N, 3C)
    k_pos = torch.where((k_pos >= 0) & (k_pos < length), k_pos, length)  # column L: outside the sequence
    columns = torch.cat(
        [k_pos[None].expand(size, -1, -1), pattern.global_index[:, None, :].expand(-1, num_blocks, -1)],
        dim=-1,
    )  # (B, N, 3C + G)
    columns = columns[:, :, None, :].expand(-1, -1, block, -1).reshape(size, num_blocks * block, -1)
    counts = torch.zeros(size, num_blocks * block, length + 1, dtype=torch.long)
    counts.scatter_add_(2, columns, allowed.reshape(size, num_blocks * block, -1).long())
    return counts[:, :length, :length] > 0


@pytest.mark.parametrize("variant", ["window", "section", "per_layer_no_cls"])
def test_masks_are_the_definition(make_tiny_config, structured_batch, variant):
    """The dense mask, and the blocked path's band bias on the rows of local tokens (the path replaces the rows
    of global tokens), are the attention definition written out element by element."""
    config = make_tiny_config(**VARIANTS[variant])
    model = StructBertModel(config)
    batch = structured_batch
    masks = (batch["attention_mask"], batch["global_attention_mask"], batch["section_ids"])
    for implementation in ("eager", "blocked"):
        model.set_attn_implementation(implementation)
        patterns = model._attention_patterns((4, 24), torch.device("cpu"), *masks, False)
        for layer_idx, pattern in enumerate(patterns):
            expected = expected_allowed(config, batch, config.layer_window(layer_idx))
            if implementation == "eager":
                assert torch.equal(pattern.mask[:, 0], expected)
            else:
                local_rows = ~pattern.is_global
                assert torch.equal(band_as_dense(pattern)[local_rows], expected[local_rows]), layer_idx


def test_attention_interface_dispatches_a_registered_path(make_tiny_config, structured_batch, monkeypatch):
    """A path registered by name is accepted by `set_attn_implementation` and runs in every layer, with the
    dense mask of the definition."""
    interface = msb.StructBertAttentionInterface
    monkeypatch.setattr(interface, "_global_mapping", dict(interface._global_mapping))  # undo the register
    calls = []

    def recording(module, query, key, value, pattern, scaling, dropout=0.0, global_qkv=None):
        calls.append(pattern)
        return msb.eager_structure_attention(module, query, key, value, pattern, scaling, dropout, global_qkv)

    interface.register("recording", recording)
    assert "recording" in msb.ALL_ATTENTION_FUNCTIONS
    config = make_tiny_config(**VARIANTS["section_separate_no_cls"])
    torch.manual_seed(0)
    model = StructBertForMaskedLM(config).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = model(**structured_batch).logits
        model.set_attn_implementation("recording")
        assert model.config._attn_implementation == "recording"
        logits = model(**structured_batch).logits
    torch.testing.assert_close(logits, reference, atol=1e-6, rtol=0)
    assert [p.implementation for p in calls] == ["recording", "recording"]
    for layer_idx, pattern in enumerate(calls):
        expected = expected_allowed(config, structured_batch, config.layer_window(layer_idx))
        assert torch.equal(pattern.mask[:, 0], expected)
    with pytest.raises(ValueError, match="blocked.*'no_such_path'"):
        model.set_attn_implementation("no_such_path")


def test_a_path_registers_its_own_mask(make_tiny_config, structured_batch, monkeypatch):
    """A mask builder registered under a path's name builds the pattern's mask for that path (once per window),
    and the path reads it: here the band mask of the blocked path, fed to the blocked kernel under a new name."""
    for interface in (msb.StructBertAttentionInterface, msb.StructBertMaskInterface):
        monkeypatch.setattr(interface, "_global_mapping", dict(interface._global_mapping))
    built = []

    def counting_band_mask(pattern):
        built.append(pattern.window)
        return msb.band_mask(pattern)

    msb.StructBertAttentionInterface.register("my_blocked", msb.blocked_structure_attention)
    msb.StructBertMaskInterface.register("my_blocked", counting_band_mask)
    config = make_tiny_config(**VARIANTS["per_layer_no_cls"])
    torch.manual_seed(0)
    model = StructBertForMaskedLM(config).eval()
    with torch.no_grad():
        model.set_attn_implementation("blocked")
        reference = model(**structured_batch).logits
        model.set_attn_implementation("my_blocked")
        logits = model(**structured_batch).logits
    assert torch.equal(logits, reference)
    assert sorted(built) == sorted({config.layer_window(i) for i in range(config.num_hidden_layers)})
    # Without a registered mask a path gets the dense mask of the definition.
    msb.StructBertAttentionInterface.register("dense_by_default", msb.eager_structure_attention)
    ones = torch.ones(1, 6, dtype=torch.bool)
    pattern = msb.build_attention_pattern("dense_by_default", 4, ones, ~ones, None)
    assert torch.equal(pattern.mask, msb.dense_mask(pattern)) and pattern.mask.shape == (1, 1, 6, 6)


def test_auto_reads_the_rule(monkeypatch):
    assert msb.auto_implementation(12, 4, "cpu") == "blocked"
    assert msb.auto_implementation(8, 4, "cpu") == "sdpa"
    assert msb.auto_implementation(4096, 256, "cuda") == "flex_attention"
    # FlexAttention has no attention dropout: training with it keeps the blocked path.
    assert msb.auto_implementation(4096, 256, "cuda", dropout=0.1) == "blocked"
    monkeypatch.setattr(msb, "AUTO_RULE", [("mine", lambda *args: True), *msb.AUTO_RULE])
    assert msb.auto_implementation(12, 4, "cpu") == "blocked"  # "mine" is not registered
    monkeypatch.setattr(
        msb.StructBertAttentionInterface, "_global_mapping", dict(msb.ALL_ATTENTION_FUNCTIONS)
    )
    msb.StructBertAttentionInterface.register("mine", msb.eager_structure_attention)
    assert msb.auto_implementation(12, 4, "cpu") == "mine"


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "blocked", "flex_attention"])
@pytest.mark.parametrize("variant", ["section", "per_layer_no_cls"])
def test_output_attentions_layout(make_tiny_config, structured_batch, implementation, variant):
    config = make_tiny_config(**VARIANTS[variant])
    torch.manual_seed(0)
    model = StructBertForMaskedLM(config).eval()
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        outputs = model(**structured_batch, output_attentions=True)
        plain = model(**structured_batch).logits
    torch.testing.assert_close(outputs.logits, plain, atol=1e-5, rtol=0)
    assert len(outputs.attentions) == config.num_hidden_layers
    for layer_idx, probs in enumerate(outputs.attentions):
        assert probs.shape == (4, 4, 24, 24)  # (B, H, L, L)
        allowed = expected_allowed(config, structured_batch, config.layer_window(layer_idx))[:, None]
        assert (probs.masked_select(~allowed) == 0).all()
        has_key = allowed.any(dim=-1).expand_as(probs[..., 0])
        sums = probs.sum(dim=-1)
        torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
        assert (sums[~has_key] == 0).all()
    if variant == "per_layer_no_cls":
        assert (~has_key).any()  # the batch really has rows without any allowed key


@pytest.mark.parametrize("implementation", ["eager", "auto"])
@pytest.mark.parametrize("variant", ["window", "section_separate_no_cls"])
def test_batch_split_invariance(make_tiny_config, structured_batch, implementation, variant):
    torch.manual_seed(0)
    model = StructBertModel(make_tiny_config(**VARIANTS[variant])).eval()
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        whole = model(**structured_batch).last_hidden_state
        for row in range(4):
            length = int(structured_batch["attention_mask"][row].sum())
            single = {k: v[row : row + 1, :length] for k, v in structured_batch.items()}
            alone = model(**single).last_hidden_state
            torch.testing.assert_close(alone[0], whole[row, :length], atol=1e-5, rtol=0, msg=f"row {row}")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def one_layer_outputs(model: StructBertModel, input_ids, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **inputs).last_hidden_state[0]


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "blocked"])
def test_locality_window_scope(make_tiny_config, implementation):
    """After one layer: a token beyond +-window/2 of a local token does not change it but changes a global one."""
    torch.manual_seed(0)
    model = StructBertModel(make_tiny_config(num_hidden_layers=1, global_attention_types=["section"])).eval()
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(5, 99, (1, 16))
    global_mask = torch.zeros(1, 16, dtype=torch.long)
    global_mask[0, 12] = 1
    changed = input_ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 99  # position 8: 5 away from token 3 (window 4 reaches +-2)
    before = one_layer_outputs(model, input_ids, global_attention_mask=global_mask)
    after = one_layer_outputs(model, changed, global_attention_mask=global_mask)
    torch.testing.assert_close(after[3], before[3], atol=1e-6, rtol=0)  # local, out of reach
    assert max_diff(after[12], before[12]) > 1e-4  # global
    assert max_diff(after[7], before[7]) > 1e-4  # local, within reach


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "blocked"])
def test_locality_section_scope(make_tiny_config, implementation):
    """Inside the window but in another section: unchanged under the section scope, changed under the window."""
    input_ids = torch.randint(5, 99, (1, 16), generator=torch.Generator().manual_seed(2))
    global_mask = torch.zeros(1, 16, dtype=torch.long)
    global_mask[0, [6, 12]] = 1
    section_ids = global_mask.cumsum(dim=1)  # token 4 is in section 0, token 6 opens section 1
    changed = input_ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 99  # 3 away from token 5 is outside; use token 5 vs 7 (distance 2)
    results = {}
    for scope in ("section", "window"):
        torch.manual_seed(0)
        model = StructBertModel(
            make_tiny_config(
                num_hidden_layers=1, local_attention_scope=scope, global_attention_types=["section"]
            )
        ).eval()
        model.set_attn_implementation(implementation)
        inputs = {"global_attention_mask": global_mask, "section_ids": section_ids}
        results[scope] = (
            one_layer_outputs(model, input_ids, **inputs),
            one_layer_outputs(model, changed, **inputs),
        )
    before, after = results["section"]
    torch.testing.assert_close(after[5], before[5], atol=1e-6, rtol=0)  # token 5 (section 0) vs 7 (section 1)
    assert max_diff(after[12], before[12]) > 1e-4  # global
    assert max_diff(after[8], before[8]) > 1e-4  # same section, within reach
    before, after = results["window"]
    assert max_diff(after[5], before[5]) > 1e-4


def mlm_logits(config: StructBertConfig, state: dict, batch: dict, train: bool = False) -> torch.Tensor:
    model = StructBertForMaskedLM(config)
    missing, _ = model.load_state_dict(state, strict=False)
    assert not missing  # every weight comes from the base model, so only the flipped field differs
    model.train(train)
    torch.manual_seed(3)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_window": 8},
        {"attention_window": [4, 8]},
        {"local_attention_scope": "section"},
        {"global_attention_types": ["cls", "title", "section"]},  # [CLS] global too
        {"hidden_act": "relu"},
        {"layer_norm_eps": 0.5},
        {"num_hidden_layers": 1},
        {"hidden_dropout_prob": 0.5, "train": True},
        {"attention_probs_dropout_prob": 0.5, "train": True},
    ],
    ids=lambda o: "-".join(k for k in o if k != "train"),
)
def test_every_config_field_changes_the_output(make_tiny_config, structured_batch, overrides):
    overrides = dict(overrides)
    train = overrides.pop("train", False)
    torch.manual_seed(0)
    state = StructBertForMaskedLM(make_tiny_config()).state_dict()
    base = mlm_logits(make_tiny_config(), state, structured_batch, train)
    flipped = mlm_logits(make_tiny_config(**overrides), state, structured_batch, train)
    assert max_diff(flipped, base) > 1e-5  # the eager reference is deterministic: any change is real


def test_separate_global_projections(make_tiny_config, structured_batch):
    """Copies of the ordinary projections reproduce the shared model exactly; other weights change the output."""
    torch.manual_seed(0)
    shared = StructBertForMaskedLM(make_tiny_config()).eval()
    separate = StructBertForMaskedLM(make_tiny_config(separate_global_projections=True)).eval()
    state = shared.state_dict()
    for name in list(state):
        for proj in ("query", "key", "value"):
            if f".self.{proj}." in name:
                state[name.replace(f".self.{proj}.", f".self.{proj}_global.")] = state[name]
    separate.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(separate(**structured_batch).logits, shared(**structured_batch).logits)
        separate.structbert.encoder.layer[0].attention.self.value_global.weight.add_(
            torch.randn(32, 32) * 0.1
        )  # not a constant: LayerNorm output sums to 0
        assert max_diff(separate(**structured_batch).logits, shared(**structured_batch).logits) > 1e-3


def test_parameter_names_and_tied_decoder(make_tiny_config):
    model = StructBertForMaskedLM(make_tiny_config(separate_global_projections=True))
    names = set(model.state_dict())
    prefix = "structbert.encoder.layer.1."
    for name in [
        "structbert.embeddings.word_embeddings.weight",
        "structbert.embeddings.position_embeddings.weight",
        "structbert.embeddings.token_type_embeddings.weight",
        "structbert.embeddings.LayerNorm.weight",
        *(
            f"{prefix}attention.self.{p}.weight"
            for p in ("query", "key", "value", "query_global", "key_global", "value_global")
        ),
        f"{prefix}attention.output.dense.weight",
        f"{prefix}attention.output.LayerNorm.weight",
        f"{prefix}intermediate.dense.weight",
        f"{prefix}output.dense.weight",
        f"{prefix}output.LayerNorm.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.decoder.weight",
        "cls.predictions.bias",
    ]:
        assert name in names, name
    assert model.cls.predictions.decoder.weight is model.structbert.embeddings.word_embeddings.weight
    assert (
        "structbert.pooler.dense.weight"
        in StructBertForSequenceClassification(make_tiny_config()).state_dict()
    )
    assert not any(".pooler." in name for name in names)  # masked LM has no pooler, as in BERT


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_window": 5}, "even"),
        ({"attention_window": 0}, "even"),
        ({"attention_window": [4, 6, 8]}, "one window per layer"),
        ({"attention_window": [4, 3]}, "even"),
        ({"local_attention_scope": "paragraph"}, "local_attention_scope"),
        ({"global_attention_types": ["cls", "footnote"]}, "footnote"),
        ({"num_attention_heads": 5}, "multiple"),
        ({"hidden_size": "32"}, "hidden_size must be a positive integer, got '32'"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"vocab_size": 99.0}, "vocab_size must be a positive integer"),
        ({"attention_window": 4.0}, "even"),
        ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob must be a probability"),
        ({"classifier_dropout": "0.1"}, "classifier_dropout must be a probability"),
    ],
)
def test_config_validation(tiny_config_kwargs, overrides, message):
    with pytest.raises(ValueError, match=message):
        StructBertConfig(**{**tiny_config_kwargs, **overrides})


def test_config_is_checked_again_when_saved(make_tiny_config, tmp_path):
    """A field changed after construction is checked before the config is written."""
    config = make_tiny_config()
    config.attention_window = 5
    with pytest.raises(ValueError, match="even"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_config_defaults_and_round_trip(tiny_config_kwargs):
    default = StructBertConfig()
    assert default.max_position_embeddings == 4096
    assert default.attention_window == 256 and default.local_attention_scope == "window"
    assert default.global_attention_types == [
        "title",
        "section",
        "subsection",
        "subsubsection",
    ]  # the paper's
    assert default.separate_global_projections is False
    config = StructBertConfig(
        **{**tiny_config_kwargs, "attention_window": [2, 8], "local_attention_scope": "section"}
    )
    again = StructBertConfig.from_dict(config.to_dict())
    assert again.attention_window == [2, 8] and again.local_attention_scope == "section"


def test_section_scope_needs_section_ids(make_tiny_config):
    model = StructBertModel(make_tiny_config(local_attention_scope="section"))
    with pytest.raises(ValueError, match="section_ids"):
        model(input_ids=torch.ones(1, 8, dtype=torch.long))


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "blocked"])
def test_all_padding_row_is_finite(make_tiny_config, implementation):
    torch.manual_seed(0)
    model = StructBertForMaskedLM(make_tiny_config(global_attention_types=["section"]))
    model.set_attn_implementation(implementation)
    input_ids = torch.randint(1, 99, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1] = 0
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    outputs.loss.backward()
    assert outputs.logits.isfinite().all()
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


def test_heads_losses(make_tiny_config, structured_batch):
    torch.manual_seed(0)
    batch = structured_batch
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    mlm = StructBertForMaskedLM(make_tiny_config()).eval()
    out = mlm(**batch, labels=labels)
    expected = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, 99), labels.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    loss, logits = mlm(**batch, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, expected)

    seq = StructBertForSequenceClassification(make_tiny_config(num_labels=3)).eval()
    targets = torch.tensor([0, 2, 1, 1])
    out = seq(**batch, labels=targets)
    assert out.logits.shape == (4, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, targets))
    regression = StructBertForSequenceClassification(make_tiny_config(num_labels=1)).eval()
    values = torch.randn(4)
    out = regression(**batch, labels=values)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), values))
    multi = StructBertForSequenceClassification(
        make_tiny_config(num_labels=3, problem_type="multi_label_classification")
    ).eval()
    hot = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    out = multi(**batch, labels=hot)
    torch.testing.assert_close(
        out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, hot)
    )

    tok = StructBertForTokenClassification(make_tiny_config(num_labels=5)).eval()
    tags = torch.randint(0, 5, (4, 24)).masked_fill(batch["attention_mask"] == 0, -100)
    out = tok(**batch, labels=tags)
    assert out.logits.shape == (4, 24, 5)
    expected = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, 5), tags.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


def test_sparse_prediction_is_the_dense_head_on_the_masked_positions(make_tiny_config, structured_batch):
    torch.manual_seed(0)
    labels = torch.full_like(structured_batch["input_ids"], -100)
    labels[0, [1, 5, 20]] = torch.tensor([7, 8, 9])
    labels[2, 3] = 11
    dense_model = StructBertForMaskedLM(make_tiny_config()).eval()
    sparse_model = StructBertForMaskedLM(make_tiny_config(sparse_prediction=True)).eval()
    sparse_model.load_state_dict(dense_model.state_dict())
    dense = dense_model(**structured_batch, labels=labels)
    sparse = sparse_model(**structured_batch, labels=labels)
    selected = labels != -100
    assert sparse.logits.shape == (4, 99)  # (M, vocab): the 4 masked positions, row-major
    torch.testing.assert_close(sparse.logits, dense.logits[selected], atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.loss, dense.loss, atol=1e-6, rtol=0)
    assert sparse_model(**structured_batch).logits.shape == (4, 24, 99)  # no labels: every position
    with pytest.raises(ValueError, match="sparse_prediction must be True or False"):
        make_tiny_config(sparse_prediction="yes")


MENTION_SPANS = torch.tensor(
    [
        [[1, 3], [5, 6], [10, 20]],  # three mentions
        [[2, 4], [0, 0], [0, 0]],  # one mention, two padded
        [[0, 9], [3, 4], [0, 0]],
        [[1, 2], [0, 0], [0, 0]],
    ]
)
MENTION_LABELS = torch.tensor([[0, 1, 1], [1, -100, -100], [0, 0, -100], [1, -100, -100]])


def test_mention_head_pools_each_span_and_ignores_padded_mentions(make_tiny_config, structured_batch):
    torch.manual_seed(0)
    model = StructBertForMentionClassification(make_tiny_config()).eval()
    out = model(**structured_batch, mention_spans=MENTION_SPANS, labels=MENTION_LABELS)
    assert type(out).__name__ == "MentionClassifierOutput" and out.logits.shape == (4, 3, 2)
    hidden = model.structbert(**structured_batch).last_hidden_state  # the reference: a loop over spans
    for row in range(4):
        for mention, (start, end) in enumerate(MENTION_SPANS[row].tolist()):
            pooled = hidden[row, start:end].mean(0) if end > start else torch.zeros(hidden.shape[-1])
            torch.testing.assert_close(out.logits[row, mention], model.classifier(pooled))
    real = MENTION_LABELS != -100
    torch.testing.assert_close(
        out.loss, torch.nn.functional.cross_entropy(out.logits[real], MENTION_LABELS[real])
    )
    loss, logits = model(
        **structured_batch, mention_spans=MENTION_SPANS, labels=MENTION_LABELS, return_dict=False
    )
    assert torch.equal(logits, out.logits) and torch.equal(loss, out.loss)
    # Padding more mentions changes nothing for the real ones.
    wider = torch.cat([MENTION_SPANS, torch.zeros(4, 2, 2, dtype=torch.long)], dim=1)
    assert torch.equal(model(**structured_batch, mention_spans=wider).logits[:, :3], out.logits)
    with pytest.raises(ValueError, match="mention_spans"):
        model(**structured_batch)
    with pytest.raises(ValueError, match=r"\(B, M, 2\)"):
        model(**structured_batch, mention_spans=MENTION_SPANS[:2])


def logits_in_a_fresh_process(folder, script: str) -> torch.Tensor:
    """Run `script` in a new Python process in `folder`, without this package on the path and with its own
    remote-code cache; the script saves its logits to logits.pt, which this returns."""
    env = {**os.environ, "HF_MODULES_CACHE": str(folder / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(folder / "logits.pt")


def test_mention_checkpoint_loads_with_automodel_here_and_through_remote_code(
    make_tiny_config, structured_batch, tmp_path
):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = StructBertForMentionClassification(make_tiny_config()).eval()
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["architectures"] == ["StructBertForMentionClassification"]
    assert config["auto_map"]["AutoModel"] == "modeling_structbert.StructBertForMentionClassification"
    with torch.no_grad():
        expected = model(**structured_batch, mention_spans=MENTION_SPANS).logits
        loaded = AutoModel.from_pretrained(tmp_path / "model").eval()
        assert type(loaded) is StructBertForMentionClassification
        assert torch.equal(loaded(**structured_batch, mention_spans=MENTION_SPANS).logits, expected)
    # An encoder checkpoint still loads as the encoder.
    StructBertModel(make_tiny_config()).save_pretrained(tmp_path / "encoder")
    assert type(AutoModel.from_pretrained(tmp_path / "encoder")) is StructBertModel
    torch.save({**structured_batch, "mention_spans": MENTION_SPANS}, tmp_path / "batch.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained("model", trust_remote_code=True).eval()
        assert "structformer" not in sys.modules, "the package must not be imported"
        assert type(model).__name__ == "StructBertForMentionClassification", type(model)
        with torch.no_grad():
            torch.save(model(**torch.load("batch.pt")).logits, "logits.pt")
        """
    )
    assert torch.equal(logits_in_a_fresh_process(tmp_path, script), expected)


def test_gradient_checkpointing_gives_the_same_gradients(make_tiny_config, structured_batch):
    torch.manual_seed(0)
    model = StructBertForMaskedLM(make_tiny_config()).train()
    labels = structured_batch["input_ids"]
    model(**structured_batch, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(**structured_batch, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-6)


def test_blocked_path_does_not_materialise_length_squared(make_tiny_config):
    """8192 tokens through the default path: the masks and scores are (L x ~1.5W), never (L x L)."""
    length = 8192
    config = make_tiny_config(
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=16,
        num_hidden_layers=1,
        max_position_embeddings=length,
        attention_window=64,
    )
    torch.manual_seed(0)
    model = StructBertForMaskedLM(config)
    input_ids = torch.randint(5, 99, (1, length))
    global_mask = torch.zeros(1, length, dtype=torch.long)
    global_mask[0, 256::512] = 1
    patterns = model.structbert._attention_patterns(
        (1, length), torch.device("cpu"), None, global_mask, None, False
    )
    assert patterns[0].implementation == "blocked" and isinstance(patterns[0].mask, msb.BandMask)
    assert patterns[0].mask.bias.shape == (length // 32, 1, 32, 96 + 16)  # 16 headings, no [CLS] by default
    outputs = model(input_ids=input_ids, global_attention_mask=global_mask, labels=input_ids)
    outputs.loss.backward()
    assert outputs.logits.shape == (1, length, 99)
    assert model.structbert.embeddings.word_embeddings.weight.grad.isfinite().all()


def test_save_and_load_in_a_fresh_process_with_remote_code(make_tiny_config, structured_batch, tmp_path):
    config = make_tiny_config(
        local_attention_scope="section", separate_global_projections=True, attention_window=[2, 6]
    )
    torch.manual_seed(0)
    model = StructBertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert set(saved["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
    }
    for name in ("modeling_structbert.py", "configuration_structbert.py", "attention_structbert.py"):
        assert (tmp_path / "model" / name).is_file(), name  # transformers copies the relative imports too
    torch.save(structured_batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**structured_batch).logits
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import AutoModelForMaskedLM
        model = AutoModelForMaskedLM.from_pretrained("model", trust_remote_code=True).eval()
        assert "structformer" not in sys.modules, "the package must not be imported"
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            torch.save(model(**torch.load("batch.pt")).logits, "logits.pt")
        """
    )
    assert torch.equal(logits_in_a_fresh_process(tmp_path, script), expected)
