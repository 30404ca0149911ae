"""Weights in and out of the lxmert backbones: transformers directories, plain and original LXMERT checkpoints,
export back to transformers, equality of outputs and gradients with transformers, errors, ``mmcore params``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from mmcore_lxmert import plugin
from mmcore_lxmert.model import Lxmert, LxmertConfig
from mmcore_lxmert.weights import export_transformers, load_weights, read_state_dict
from torch import Tensor

from mmcore.api import DataInfo
from mmcore.cli import main
from mmcore.errors import MMCoreError

transformers = pytest.importorskip("transformers")

VOCAB, FEAT, HIDDEN, HEADS, INTER, POSITIONS = 50, 24, 32, 2, 64, 40
FULL, S_SHAPE = (2, 2, 2), (0, 2, 0)  # (l, x, r)
OFF = {"visual_cls": False, "product_pooler": False, "whole_word_positions": False}
# transformers gives these tables padding_idx=0: row 0 never gets a gradient there (mmcore trains every row).
PADDING_IDX_TABLES = {f"embeddings.{t}.weight" for t in ("word_embeddings", "position_embeddings",
                                                          "token_type_embeddings")}


def reference_config(l: int, x: int, r: int) -> Any:
    return transformers.LxmertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTER, l_layers=l,
        x_layers=x, r_layers=r, visual_feat_dim=FEAT, max_position_embeddings=POSITIONS,
    )


def randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (biases and LayerNorms too), so that a swapped name cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def reference(shape: tuple[int, int, int], cls: str = "LxmertModel", seed: int = 3) -> Any:
    return randomise_(getattr(transformers, cls)(reference_config(*shape)), seed)


def ours(shape: tuple[int, int, int], **options: Any) -> Lxmert:
    l, x, r = shape
    torch.manual_seed(0)
    config = LxmertConfig(vocab_size=VOCAB, visual_feat_dim=FEAT, hidden_size=HIDDEN, num_attention_heads=HEADS,
                          intermediate_size=INTER, l_layers=l, x_layers=x, r_layers=r,
                          max_position_embeddings=POSITIONS, **{**OFF, **options})
    return Lxmert(config).eval()


def batch(b: int = 3, t: int = 7, o: int = 5, seed: int = 1) -> dict[str, Tensor]:
    """Examples of different real lengths: text and regions padded in all but one."""
    g = torch.Generator().manual_seed(seed)
    attention_mask = (torch.arange(t)[None] < torch.tensor([t - 2, t, t - 3])[:b, None]).long()
    visual_mask = (torch.arange(o)[None] < torch.tensor([o - 2, o - 1, o])[:b, None]).long()
    return {
        "input_ids": torch.randint(1, VOCAB, (b, t), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        "visual_feats": torch.randn(b, o, FEAT, generator=g),
        "visual_pos": torch.rand(b, o, 4, generator=g),
        "visual_mask": visual_mask,
    }


def run_reference(model: Any, data: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                visual_feats=data["visual_feats"], visual_pos=data["visual_pos"],
                visual_attention_mask=data["visual_mask"])
    return out.language_output, out.vision_output, out.pooled_output


def assert_same_outputs(mine: tuple[Tensor, ...], theirs: tuple[Tensor, ...]) -> None:
    for name, a, b in zip(("text", "vision", "pooled"), mine, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def same_tensors(a: dict[str, Tensor], b: dict[str, Tensor], prefix: str = "") -> None:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys
    for key in keys:
        assert torch.equal(a[key], b[key]), key


# --- equality with transformers ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [FULL, S_SHAPE], ids=["lxmert", "lxmert_s"])
def test_save_pretrained_directory_gives_transformers_outputs_and_gradients(shape, tmp_path) -> None:
    theirs = reference(shape)
    theirs.save_pretrained(tmp_path)
    mine = ours(shape)
    report = load_weights(mine, tmp_path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(theirs.state_dict())

    data = batch()
    out = mine(**data)
    expected = run_reference(theirs, data)
    assert_same_outputs(tuple(out), expected)
    sum(x.sum() for x in out).backward()
    sum(x.sum() for x in expected).backward()
    their_params = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        reference_grad = their_params[name].grad
        if name in PADDING_IDX_TABLES:
            assert torch.count_nonzero(reference_grad[0]) == 0
            p_grad, reference_grad = p.grad[1:], reference_grad[1:]
        else:
            p_grad = p.grad
        torch.testing.assert_close(p_grad, reference_grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("shape", [FULL, S_SHAPE], ids=["lxmert", "lxmert_s"])
def test_export_loads_in_transformers_with_the_same_outputs(shape, tmp_path) -> None:
    mine = randomise_(ours(shape), seed=5)
    report = export_transformers(mine, tmp_path / "export")
    assert report.skipped == [] and report.differences == []
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert (config["l_layers"], config["x_layers"], config["r_layers"]) == shape
    theirs = transformers.LxmertModel.from_pretrained(tmp_path / "export").eval()
    data = batch(seed=2)
    with torch.no_grad():
        assert_same_outputs(tuple(mine(**data)), run_reference(theirs, data))
    same_tensors(mine.state_dict(), theirs.state_dict())


def test_export_of_lxmert_s_leaves_out_its_extras_and_says_so(tmp_path) -> None:
    mine = ours(S_SHAPE, visual_cls=True, product_pooler=True, whole_word_positions=True)
    report = export_transformers(mine, tmp_path)
    assert sorted(report.skipped) == ["visn_pooler.dense.bias", "visn_pooler.dense.weight", "visual_cls_embedding"]
    assert [d.split()[0] for d in report.differences] == ["visual_cls", "product_pooler", "whole_word_positions"]
    theirs = transformers.LxmertModel.from_pretrained(tmp_path)
    same_tensors(mine.state_dict(), theirs.state_dict(), prefix="encoder.x_layers.")


# --- other sources ---------------------------------------------------------------------------------------------

def test_original_lxmert_checkpoint_with_bert_and_module_prefixes(tmp_path) -> None:
    pretraining = reference(FULL, cls="LxmertForPreTraining")
    state = {}
    for key, value in pretraining.state_dict().items():
        key = "module." + key.replace("lxmert.", "bert.", 1)
        state[key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = value
    assert any(k.endswith("LayerNorm.gamma") for k in state)
    torch.save(state, tmp_path / "model_LXRT.pth")
    mine = ours(FULL)
    report = load_weights(mine, tmp_path / "model_LXRT.pth")
    assert report.missing == []
    assert {k.split(".")[0] for k in report.unexpected} == {"cls", "obj_predict_head", "answer_head"}
    same_tensors(mine.state_dict(), pretraining.lxmert.state_dict())


def test_pretraining_directory_and_full_weights_into_lxmert_s(tmp_path, capsys) -> None:
    pretraining = reference(FULL, cls="LxmertForPreTraining")
    pretraining.save_pretrained(tmp_path)
    source = pretraining.lxmert.state_dict()
    options = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "intermediate_size": INTER, "x_layers": 2,
               "max_position_embeddings": POSITIONS, "weights": str(tmp_path)}
    mine = plugin.build_lxmert_s(options, info())
    assert mine.config.visual_cls and len(mine.encoder.layer) == 0
    for prefix in ("encoder.x_layers.", "embeddings.", "encoder.visn_fc.", "pooler."):
        same_tensors(mine.state_dict(), source, prefix)
    report = load_weights(ours(S_SHAPE, visual_cls=True, product_pooler=True), tmp_path)
    assert sorted(report.missing) == ["visn_pooler.dense.bias", "visn_pooler.dense.weight", "visual_cls_embedding"]
    unused = {".".join(k.split(".")[:2]) if k.startswith("encoder.") else k.split(".")[0] for k in report.unexpected}
    assert unused == {"encoder.layer", "encoder.r_layers", "cls", "obj_predict_head", "answer_head"}
    message = capsys.readouterr().err
    assert "backbone lxmert_s: loaded" in message and "encoder.layer.* (32), encoder.r_layers.* (32)" in message


@pytest.mark.parametrize("form", ["pt", "safetensors", "bin_dir", "mmcore_checkpoint"])
def test_plain_state_dict_files(form, tmp_path) -> None:
    from safetensors.torch import save_file

    source = randomise_(ours(FULL), seed=7)
    state = source.state_dict()
    if form == "pt":
        path = tmp_path / "weights.pt"
        torch.save(state, path)
    elif form == "safetensors":
        path = tmp_path / "weights.safetensors"
        save_file(state, str(path))
    elif form == "bin_dir":
        path = tmp_path
        torch.save({"lxmert." + k: v for k, v in state.items()}, path / "pytorch_model.bin")
    else:
        path = tmp_path / "checkpoint.pt"
        torch.save({"stage": "token", "backbone": state, "tasks": {"mlm": {"w": torch.ones(2)}}, "step": 3}, path)
    target = ours(FULL)
    report = load_weights(target, path)
    assert report.missing == [] and report.unexpected == [] and len(report.loaded) == len(state)
    same_tensors(target.state_dict(), state)


# --- errors ---------------------------------------------------------------------------------------------------

def info() -> DataInfo:
    return DataInfo(vocab_size=VOCAB, feature_dim=FEAT, max_regions=5, num_objects=10, num_attributes=5,
                    pad_token_id=0, cls_token_id=1, sep_token_id=2, mask_token_id=3, unk_token_id=4,
                    special_token_ids=(0, 1, 2, 3, 4), object_token_ids=())


def test_missing_weights_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(MMCoreError, match="backbone lxmert: weights not found: .*nowhere/model.safetensors"):
        plugin.build_lxmert({"hidden_size": HIDDEN, "num_attention_heads": HEADS, "weights": str(missing)}, info())
    with pytest.raises(MMCoreError, match="has none of model.safetensors"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_file_is_a_clear_error(name, tmp_path) -> None:
    reference(S_SHAPE).save_pretrained(tmp_path / "full")
    data = (tmp_path / "full" / "model.safetensors").read_bytes()
    if name.endswith(".bin"):
        torch.save(read_state_dict(tmp_path / "full"), tmp_path / "full.bin")
        data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(MMCoreError, match=f"cannot read weights file .*cut/{name} \\(truncated, corrupt"):
        load_weights(ours(S_SHAPE), tmp_path / "cut")


def test_file_that_would_run_code_is_refused(tmp_path) -> None:
    torch.save({"encoder.visn_fc.visn_fc.bias": torch.zeros(HIDDEN), "extra": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(MMCoreError, match="not tensors only"):
        load_weights(ours(S_SHAPE), tmp_path / "evil.pt")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path) -> None:
    state = ours(S_SHAPE).state_dict()
    state["encoder.x_layers.1.lang_inter.dense.weight"] = torch.zeros(INTER + 1, HIDDEN)
    torch.save(state, tmp_path / "w.pt")
    target = ours(S_SHAPE)
    before = target.state_dict()["encoder.x_layers.0.lang_inter.dense.weight"].clone()
    with pytest.raises(MMCoreError, match=r"'encoder.x_layers.1.lang_inter.dense.weight' has shape \(65, 32\) in the "
                                          r"file but \(64, 32\) in the backbone"):
        load_weights(target, tmp_path / "w.pt")
    assert torch.equal(target.state_dict()["encoder.x_layers.0.lang_inter.dense.weight"], before)  # nothing loaded


def test_file_matching_nothing_is_an_error(tmp_path) -> None:
    torch.save({"classifier.weight": torch.zeros(2, 2)}, tmp_path / "w.pt")
    with pytest.raises(MMCoreError, match="none of its 1 tensors matches"):
        load_weights(ours(S_SHAPE), tmp_path / "w.pt")


# --- mmcore params ---------------------------------------------------------------------------------------------

RECIPE = """\
name: count
backbone: {name: lxmert, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, l_layers: 2, x_layers: 2,
           r_layers: 2, max_position_embeddings: 40, weights: WEIGHTS}
datasets:
  synthworld: {train_images: 20, val_images: 4, test_images: 4, vqa_train_images: 8, retrieval_train_images: 4,
               max_regions: 6, feature_dim: 24, hard_negatives_top: 5}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 1, batch_size: 4}
"""


def test_params_command_counts_the_recipes_backbone(tmp_path) -> None:
    # The dataset's vocabulary differs from VOCAB: the file holds every tensor but the word embeddings.
    state = {k: v for k, v in ours(FULL).state_dict().items() if not k.startswith("embeddings.word")}
    torch.save(state, tmp_path / "w.pt")
    recipe = tmp_path / "count.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).replace("WEIGHTS", str(tmp_path / "w.pt")))
    result = CliRunner().invoke(main, ["params", str(recipe), "--cache-dir", str(tmp_path / "cache")],
                                terminal_width=200)
    assert result.exit_code == 0, (result.output, result.exception)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
            if line.count("│") == 4}
    counts = ours(FULL).parameter_counts()
    for part in ("transformer", "language_layers", "relationship_layers", "cross_layers", "visual_encoder"):
        assert rows[part] == f"{counts[part]:,}", part
    assert int(rows["total"].replace(",", "")) > counts["transformer"]

    recipe.write_text(textwrap.dedent(RECIPE).replace("WEIGHTS", str(tmp_path / "absent.pt")))
    result = CliRunner().invoke(main, ["params", str(recipe), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "weights not found" in result.output and "absent.pt" in result.output
