"""The lxmert and lxmert_s backbones: shapes, padding invariance, LXMERT-S options, transformers compatibility,
plugin, parameter counts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from mmcore_lxmert import plugin
from mmcore_lxmert.layers import SingleModalityLayer, attention_bias
from mmcore_lxmert.model import Lxmert, LxmertConfig, count_parameters
from torch import Tensor

from mmcore.api import BackboneOutput, DataInfo
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

VOCAB, FEAT, HIDDEN, HEADS, INTER = 50, 24, 32, 4, 64
TINY = {"vocab_size": VOCAB, "visual_feat_dim": FEAT, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "intermediate_size": INTER, "x_layers": 2, "max_position_embeddings": 40}
OFF = {"visual_cls": False, "product_pooler": False, "whole_word_positions": False}


def tiny(**options: Any) -> Lxmert:
    torch.manual_seed(0)
    return Lxmert(LxmertConfig(**{**TINY, **options})).eval()


def batch(b: int = 3, t: int = 7, o: int = 5, seed: int = 1) -> dict[str, Tensor]:
    """A batch whose examples have different real lengths (the last one is unpadded)."""
    g = torch.Generator().manual_seed(seed)
    text_len = torch.tensor([t - 2, t - 1, t])[:b]
    regions = torch.tensor([o - 2, o, o - 1])[:b]
    attention_mask = (torch.arange(t)[None] < text_len[:, None]).long()
    visual_mask = (torch.arange(o)[None] < regions[:, None]).long()
    return {
        "input_ids": torch.randint(1, VOCAB, (b, t), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        # Whole-word style: [CLS] 1, words from 2 with a repeat (a WordPiece continuation), padding 0.
        "position_ids": torch.tensor([1, 2, 2, 3, 4, 5, 6, 7, 8][:t]).repeat(b, 1) * attention_mask,
        "visual_feats": torch.randn(b, o, FEAT, generator=g),
        "visual_pos": torch.rand(b, o, 4, generator=g),
        "visual_mask": visual_mask,
    }


def run(model: Lxmert, data: dict[str, Tensor]) -> BackboneOutput:
    with torch.no_grad():
        return model(**data)


def encoder_streams(model: Lxmert, data: dict[str, Tensor]) -> tuple[BackboneOutput, Tensor, Tensor]:
    """The output plus the encoder's raw language and vision streams (vision including any [CLS] region)."""
    seen: list[tuple[Tensor, Tensor]] = []
    handle = model.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        out = run(model, data)
    finally:
        handle.remove()
    return out, seen[0][0], seen[0][1]


@pytest.mark.parametrize("visual_cls", [False, True])
def test_output_shapes_exclude_visual_cls(visual_cls: bool) -> None:
    model = tiny(visual_cls=visual_cls, product_pooler=visual_cls)
    data = batch()
    out, _lang, visn = encoder_streams(model, data)
    assert out.text.shape == (3, 7, HIDDEN)
    assert out.vision.shape == (3, 5, HIDDEN)
    assert out.pooled.shape == (3, HIDDEN)
    assert visn.shape == (3, 5 + int(visual_cls), HIDDEN)
    torch.testing.assert_close(out.vision, visn[:, int(visual_cls):], rtol=0, atol=0)
    assert model.hidden_size == HIDDEN
    assert model.word_embeddings() is model.embeddings.word_embeddings


@pytest.mark.parametrize("options", [{}, OFF, {"l_layers": 1, "r_layers": 2}], ids=["lxmert_s", "off", "full"])
def test_padding_invariance(options: dict[str, bool]) -> None:
    model = tiny(**options)
    data = batch()
    out = run(model, data)
    padded = dict(data)
    extra_t, extra_o = 4, 3
    b = data["input_ids"].shape[0]
    for key in ("input_ids", "attention_mask", "position_ids"):
        padded[key] = torch.cat([data[key], torch.zeros(b, extra_t, dtype=torch.long)], dim=1)
    padded["visual_feats"] = torch.cat([data["visual_feats"], torch.randn(b, extra_o, FEAT)], dim=1)
    padded["visual_pos"] = torch.cat([data["visual_pos"], torch.rand(b, extra_o, 4)], dim=1)
    padded["visual_mask"] = torch.cat([data["visual_mask"], torch.zeros(b, extra_o, dtype=torch.long)], dim=1)
    out_padded = run(model, padded)
    for i in range(b):
        t, o = int(data["attention_mask"][i].sum()), int(data["visual_mask"][i].sum())
        torch.testing.assert_close(out_padded.text[i, :t], out.text[i, :t], rtol=0, atol=1e-5)
        torch.testing.assert_close(out_padded.vision[i, :o], out.vision[i, :o], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_padded.pooled, out.pooled, rtol=0, atol=1e-5)


def test_fully_padded_image_stays_finite() -> None:
    data = batch()
    data["visual_mask"][0] = 0
    out = run(tiny(**OFF), data)
    assert all(torch.isfinite(x).all() for x in out)


def test_product_pooler_is_product_of_two_poolers() -> None:
    model = tiny()
    out, lang, visn = encoder_streams(model, batch())
    text_pool = torch.tanh(model.pooler.dense(lang[:, 0]))
    visn_pool = torch.tanh(model.visn_pooler.dense(visn[:, 0]))
    torch.testing.assert_close(out.pooled, text_pool * visn_pool)
    plain = tiny(product_pooler=False)
    out, lang, _ = encoder_streams(plain, batch())
    torch.testing.assert_close(out.pooled, torch.tanh(plain.pooler.dense(lang[:, 0])))


def test_whole_word_positions_used_only_when_on() -> None:
    data = batch()
    shifted = dict(data, position_ids=torch.arange(7).repeat(3, 1))
    on = tiny()
    assert not torch.allclose(run(on, data).text, run(on, shifted).text)
    off = tiny(whole_word_positions=False)
    torch.testing.assert_close(run(off, data).text, run(off, shifted).text, rtol=0, atol=0)
    no_positions = dict(data)
    del no_positions["position_ids"]
    torch.testing.assert_close(run(off, no_positions).text, run(off, data).text, rtol=0, atol=0)
    with pytest.raises(MMCoreError, match="position_ids"):
        run(on, no_positions)


def test_training_mode_backward_and_dropout() -> None:
    model = tiny().train()
    data = batch()
    first, second = model(**data), model(**data)
    assert not torch.allclose(first.text, second.text)
    (first.text.sum() + first.vision.sum() + first.pooled.sum()).backward()
    assert model.visual_cls_embedding.grad is not None
    assert all(p.grad is not None for p in model.parameters())


def test_forward_traces_as_one_graph() -> None:
    # fullgraph=True fails on any graph break, which is what a host sync (.item(), branching on values) causes.
    model = tiny()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    data = batch()
    torch.testing.assert_close(run(compiled, data).pooled, run(model, data).pooled)


def test_init_follows_bert() -> None:
    model = tiny()
    ln = model.encoder.x_layers[0].lang_output.LayerNorm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    dense = model.encoder.x_layers[0].visual_attention.att.query
    assert torch.equal(dense.bias, torch.zeros_like(dense.bias))
    assert abs(float(model.embeddings.word_embeddings.weight.detach().std()) - 0.02) < 0.003


# --- transformers compatibility -------------------------------------------------------------------------------

SHARED_PREFIXES = ("embeddings.", "encoder.visn_fc.", "encoder.x_layers.", "pooler.")


def random_transformers_model() -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.LxmertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTER, l_layers=0,
        x_layers=2, r_layers=0, visual_feat_dim=FEAT, max_position_embeddings=40,
    )
    torch.manual_seed(3)
    reference = transformers.LxmertModel(config).eval()
    # Random values everywhere (biases and LayerNorms too), so that a swapped name cannot go unnoticed.
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    return reference


def test_parameter_names_match_transformers() -> None:
    reference = random_transformers_model()
    ours = tiny(**OFF)
    theirs = {k for k in reference.state_dict() if k.startswith(SHARED_PREFIXES)}
    assert set(ours.state_dict()) == theirs
    with_extras = set(tiny().state_dict())
    assert with_extras - theirs == {"visual_cls_embedding", "visn_pooler.dense.weight", "visn_pooler.dense.bias"}


@pytest.mark.parametrize("with_visual_mask", [True, False])
def test_forward_matches_transformers(with_visual_mask: bool) -> None:
    reference = random_transformers_model()
    ours = tiny(**OFF)
    state = {k: v for k, v in reference.state_dict().items() if k.startswith(SHARED_PREFIXES)}
    ours.load_state_dict(state, strict=True)
    data = batch()
    with torch.no_grad():
        expected = reference(
            input_ids=data["input_ids"], attention_mask=data["attention_mask"], visual_feats=data["visual_feats"],
            visual_pos=data["visual_pos"], visual_attention_mask=data["visual_mask"] if with_visual_mask else None,
        )
    if not with_visual_mask:
        del data["visual_mask"]
    out = run(ours, data)
    torch.testing.assert_close(out.text, expected.language_output, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.vision, expected.vision_output, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooled, expected.pooled_output, rtol=0, atol=1e-5)


def test_single_modality_layer_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.lxmert.modeling_lxmert import LxmertLayer

    config = transformers.LxmertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTER)
    reference = LxmertLayer(config).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    ours = SingleModalityLayer(HIDDEN, HEADS, INTER, 0.1, 0.1).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    hidden, mask = torch.randn(3, 6, HIDDEN), batch(t=6)["attention_mask"]
    bias = attention_bias(mask, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours(hidden, bias), reference(hidden, bias)[0], rtol=0, atol=1e-5)


# --- configuration, plugin, parameter counts -------------------------------------------------------------------

def info() -> DataInfo:
    return DataInfo(vocab_size=VOCAB, feature_dim=FEAT, max_regions=5, num_objects=10, num_attributes=5,
                    pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3, unk_token_id=4,
                    special_token_ids=(0, 1, 2, 3, 4), object_token_ids=())


def test_plugin_registers_lxmert_s_with_every_option() -> None:
    registry = Registry()
    plugin.mmcore_register_backbones(registry)
    entry = registry.get("backbone", "lxmert_s")
    assert entry.defaults["visual_cls"] and entry.defaults["product_pooler"] and entry.defaults["whole_word_positions"]
    assert (entry.defaults["x_layers"], entry.defaults["l_layers"], entry.defaults["r_layers"]) == (5, 0, 0)
    assert (entry.defaults["hidden_size"], entry.defaults["num_attention_heads"]) == (768, 12)
    assert "vocab_size" not in entry.defaults and "visual_feat_dim" not in entry.defaults
    small = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "intermediate_size": INTER, "x_layers": 1}
    model = entry.factory(small, info())
    assert isinstance(model, Lxmert)
    assert model.config.vocab_size == VOCAB and model.config.visual_feat_dim == FEAT
    assert model.config.visual_cls and model.config.product_pooler and model.config.whole_word_positions


def test_plugin_registers_full_lxmert_sharing_the_model() -> None:
    registry = Registry()
    plugin.mmcore_register_backbones(registry)
    entry = registry.get("backbone", "lxmert")
    assert (entry.defaults["l_layers"], entry.defaults["x_layers"], entry.defaults["r_layers"]) == (9, 5, 5)
    assert not (entry.defaults["visual_cls"] or entry.defaults["product_pooler"]
                or entry.defaults["whole_word_positions"])
    assert set(entry.defaults) == set(registry.get("backbone", "lxmert_s").defaults)
    small = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "intermediate_size": INTER,
             "l_layers": 2, "x_layers": 1, "r_layers": 3}
    model = entry.factory(small, info())
    assert type(model) is Lxmert
    assert (len(model.encoder.layer), len(model.encoder.x_layers), len(model.encoder.r_layers)) == (2, 1, 3)
    assert model.visual_cls_embedding is None and model.visn_pooler is None
    assert model.config.whole_word_positions is False


@pytest.mark.parametrize("build", [plugin.build_lxmert_s, plugin.build_lxmert])
@pytest.mark.parametrize("key", ["hidden_sise", "vocab_size"])
def test_plugin_rejects_unknown_or_data_keys(build: Any, key: str) -> None:
    with pytest.raises(MMCoreError, match=key):
        build({key: 32}, info())


@pytest.mark.parametrize("options, message", [
    ({"l_layers": -1}, "l_layers"),
    ({"r_layers": 1.5}, "r_layers"),
    ({"x_layers": 0}, "x_layers"),
    ({"visual_cls": False}, "product_pooler"),
    ({"num_attention_heads": 5}, "multiple"),
    ({"hidden_dropout": 1.5}, "hidden_dropout"),
    ({"visual_cls": "yes"}, "visual_cls"),
])
def test_config_errors_are_clear(options: dict[str, Any], message: str) -> None:
    with pytest.raises(MMCoreError, match=message):
        LxmertConfig(**{**TINY, **options})


def paper_size(**options: Any) -> Lxmert:
    """A paper-size backbone on the meta device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        return Lxmert(LxmertConfig(vocab_size=30522, visual_feat_dim=2048, **options))


# Hand-computed at 768/12/3072: a BERT layer is 4 (768x768 + 768) attention + 2x768 LayerNorm
# + (768x3072 + 3072) + (3072x768 + 768) + 2x768 = 7,087,872; a cross-modality layer is three attention blocks
# (4 x 590,592 + 1,536 each) and two feed-forward blocks (2,362,368 + 2,361,600 each) = 16,539,648; the visual
# feature encoder is (2048x768 + 768) + (4x768 + 768) + 2 LayerNorms = 1,580,544.
BERT_LAYER, CROSS_LAYER, VISUAL_ENCODER = 7_087_872, 16_539_648, 1_580_544
EMBEDDINGS = (30522 + 512 + 2) * 768 + 2 * 768
POOLER = 768 * 768 + 768


def test_parameter_counts_lxmert_s_match_paper_table_1() -> None:
    counts = paper_size().parameter_counts()
    assert counts["transformer"] == VISUAL_ENCODER + 5 * CROSS_LAYER == 84_278_784
    assert abs(counts["transformer"] - 84.3e6) / 84.3e6 < 0.01
    assert counts["language_layers"] == counts["relationship_layers"] == 0
    assert counts["embeddings"] == EMBEDDINGS
    assert counts["poolers"] == 2 * POOLER and counts["visual_cls"] == 2048
    assert counts["total"] == counts["transformer"] + EMBEDDINGS + 2 * POOLER + 2048
    # transformers' "excluding embeddings" count keeps the pooler and the embedding LayerNorm (84.9M).
    plain = paper_size(**OFF).parameter_counts()
    assert abs(plain["total"] - (30522 + 512 + 2) * 768 - 84.9e6) < 0.05e6


def test_parameter_counts_full_lxmert_match_paper_table_1() -> None:
    counts = paper_size(l_layers=9, x_layers=5, r_layers=5, **OFF).parameter_counts()
    assert counts["language_layers"] == 9 * BERT_LAYER and counts["relationship_layers"] == 5 * BERT_LAYER
    assert counts["transformer"] == VISUAL_ENCODER + 14 * BERT_LAYER + 5 * CROSS_LAYER == 183_508_992
    assert abs(counts["transformer"] - 183.5e6) / 183.5e6 < 0.01
    assert counts["total"] == counts["transformer"] + EMBEDDINGS + POOLER
    assert abs(counts["total"] - (30522 + 512 + 2) * 768 - 184.1e6) < 0.05e6  # transformers' count


def test_count_parameters_finds_backbones_inside_a_model() -> None:
    backbone = tiny(l_layers=1, r_layers=1)
    head = torch.nn.Linear(HIDDEN, 2)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    assert count_parameters(model, transformer_only=True) == backbone.parameter_counts()["transformer"]
    assert count_parameters(model, transformer_only=False) == backbone.parameter_counts()["total"] + 2 * HIDDEN + 2
    with pytest.raises(ValueError, match="no Lxmert"):
        count_parameters(head, transformer_only=True)


def test_bf16_autocast_runs_and_stays_close() -> None:
    model, data = tiny(), batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(**data)
    assert all(torch.isfinite(x).all() for x in low)
    torch.testing.assert_close(low.pooled.float(), run(model, data).pooled, rtol=0, atol=0.05)
