"""Exact weight loading (docs/authors_code.md, 'The duplication rule'; docs/data_formats.md, 'Checkpoints'): round trips through every supported layout,
key accounting, clear errors, safe unpickling, and the paper's parameter counts."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForImageTextRetrieval

from cirtutor.cli import main
from cirtutor.config import get_model_config
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize
from cirtutor.models.backbones import text_config, vision_config
from cirtutor.models.loading import (CheckpointError, export_authors_checkpoint, interpolate_pos_embed, load_filter,
                                     load_reranker, to_original_names)

TINY = get_model_config("tiny")


class NotATensor:  # a pickled custom object, which weights_only loading refuses
    pass


def filter_outputs(model):
    ids, mask = tokenize(["make it red", "add a small square"])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.encode_images(images)
        q, z_t = model(ids, mask, feats)
        return q, z_t, model.gallery_embed(feats)


def random_filter(seed=0):
    torch.manual_seed(seed)
    model = CandidateFilter(TINY).eval()
    with torch.no_grad():  # a fresh ViT/projections are random too; make temp distinctive
        model.temp.fill_(0.0423)
    return model


def blip_checkpoint(model, path, extra=True):
    """Write `model` as BLIP's original model_base.pth would hold it (plus pre-training-only keys)."""
    state = to_original_names(model.state_dict())
    if extra:
        state.update({"text_encoder.embeddings.position_ids": torch.arange(64)[None], "itm_head.weight": torch.zeros(2, 96),
                      "visual_encoder_m.cls_token": torch.zeros(1, 1, 96), "image_queue": torch.zeros(64, 10),
                      "text_decoder.bert.embeddings.word_embeddings.weight": torch.zeros(3, 96)})
    torch.save({"model": state}, path)
    return path


def test_blip_layout_round_trip_is_exact(tmp_path):
    source = random_filter()
    loaded, report = load_filter(blip_checkpoint(source, tmp_path / "model_base.pth"), TINY)
    for a, b in zip(filter_outputs(source), filter_outputs(loaded.eval())):
        assert torch.equal(a, b)
    assert report.source == "blip" and report.initialised == []
    assert set(report.ignored) == {"text_encoder.embeddings.position_ids", "itm_head.weight", "visual_encoder_m.cls_token",
                                   "image_queue", "text_decoder.bert.embeddings.word_embeddings.weight"}
    assert loaded.temp.item() == pytest.approx(0.0423)


def test_authors_stage1_round_trip_and_optimizer_ignored(tmp_path):
    source = random_filter(1)
    ckpt = export_authors_checkpoint(source, epoch=7)
    ckpt["optimizer_state_dict"] = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 2e-5}]}
    torch.save(ckpt, tmp_path / "blip.pt")
    loaded, report = load_filter(tmp_path / "blip.pt", TINY)
    assert all(torch.equal(a, b) for a, b in zip(filter_outputs(source), filter_outputs(loaded.eval())))
    assert report.source == "authors_stage1" and report.meta["epoch"] == 7 and "optimizer_state_dict" in report.ignored


def test_authors_stage2_round_trip(tmp_path):
    torch.manual_seed(2)
    source = DualEncoderReranker(TINY).eval()
    torch.save(export_authors_checkpoint(source, epoch=3), tmp_path / "stage2.pt")
    loaded, report = load_reranker(tmp_path / "stage2.pt", TINY)
    ids, mask = tokenize(["make it red", "add a small square"])
    z_t, cands = torch.randn(2, ids.shape[1], 96), torch.randn(2, 5, 65, 96)
    with torch.no_grad():
        assert torch.equal(source.score_candidates(ids, mask, z_t, cands), loaded.eval().score_candidates(ids, mask, z_t, cands))
    assert report.source == "authors_stage2" and report.initialised == []
    with pytest.raises(CheckpointError, match="stage-2 .*load_reranker"):
        load_filter(tmp_path / "stage2.pt", TINY)


def test_reranker_from_blip_duplicates_every_text_layer(tmp_path):
    source = random_filter(3)
    model, report = load_reranker(blip_checkpoint(source, tmp_path / "model_base.pth"), TINY)
    src, dst = source.state_dict(), model.state_dict()
    for i in range(TINY.text_layers):
        for block in ("attention", "crossattention"):
            p = f"text_encoder.encoder.layer.{i}.{block}"
            for s, d in (("self.query.weight", "self0.query.weight"), ("self.query.weight", "self1.query.weight"),
                         ("output.dense.bias", "output.dense0.bias"), ("output.dense.bias", "output.dense1.bias"),
                         ("output.LayerNorm.weight", "output.LayerNormA.weight"),
                         ("output.LayerNorm.weight", "output.LayerNormB.weight")):
                assert torch.equal(dst[f"{p}.{d}"], src[f"{p}.{s}"])
        assert torch.equal(dst[f"text_encoder.encoder.layer.{i}.output.dense.weight"],
                           src[f"text_encoder.encoder.layer.{i}.output.dense.weight"])
    assert torch.equal(dst["visual_encoder.embeddings.position_embedding"], src["visual_encoder.embeddings.position_embedding"])
    assert sorted({k.split(".")[0] if k.startswith("cls") else "merge" for k in report.initialised}) == ["cls_head", "merge"]
    assert {"vision_proj.weight", "text_proj.bias", "temp"} <= set(report.ignored)
    dual, _ = load_reranker(tmp_path / "model_base.pth", dataclasses.replace(TINY, dual_ffn=True))
    assert torch.equal(dual.state_dict()["text_encoder.encoder.layer.1.output1.dense.weight"],
                       src["text_encoder.encoder.layer.1.output.dense.weight"])


def test_transformers_folder(tmp_path):
    torch.manual_seed(4)
    cfg = BlipConfig(text_config=text_config(TINY).to_dict(), vision_config=vision_config(TINY).to_dict(),
                     image_text_hidden_size=TINY.embed_dim)
    hf = BlipForImageTextRetrieval(cfg).eval()
    hf.save_pretrained(tmp_path / "blip")
    model, report = load_filter(tmp_path / "blip", TINY)
    assert report.initialised == ["temp"] and any(k.startswith("itm_head") for k in report.ignored)
    ids, mask = tokenize(["a red circle"])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        image_feats = hf.vision_model(pixel_values=pixels).last_hidden_state
        expected = F.normalize(hf.vision_proj(image_feats[:, 0]), dim=-1)
        assert torch.allclose(model.eval().gallery_embed(model.encode_images(pixels)), expected, atol=1e-6)


def test_renamed_or_reshaped_key_is_named(tmp_path):
    state = to_original_names(random_filter().state_dict())
    state["text_encoder.encoder.layer.0.attention.self.qeury.weight"] = state.pop("text_encoder.encoder.layer.0.attention.self.query.weight")
    torch.save({"model": state}, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as e:
        load_filter(tmp_path / "renamed.pth", TINY)
    assert "1 missing: text_encoder.encoder.layer.0.attention.self.query.weight" in str(e.value)
    assert "1 unexpected: text_encoder.encoder.layer.0.attention.self.qeury.weight" in str(e.value)
    state = to_original_names(random_filter().state_dict())
    state["text_proj.weight"] = torch.zeros(64, 96)
    torch.save({"model": state}, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match=r"text_proj.weight: checkpoint \(64, 96\) vs model \(32, 96\)"):
        load_filter(tmp_path / "reshaped.pth", TINY)
    torch.save({"weights": state}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint"):
        load_filter(tmp_path / "odd.pth", TINY)
    with pytest.raises(CheckpointError, match="not found"):
        load_filter(tmp_path / "nothing.pth", TINY)


def test_pickled_objects_need_trust(tmp_path):
    state = to_original_names(random_filter().state_dict())
    torch.save({"model": state, "args": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="trust"):
        load_filter(tmp_path / "pickled.pth", TINY)
    model, _ = load_filter(tmp_path / "pickled.pth", TINY, trust=True)
    assert isinstance(model, CandidateFilter)


def test_pos_embed_interpolation_keeps_cls_and_is_bicubic():
    pos = torch.randn(1, 1 + 16, 8)
    out = interpolate_pos_embed(pos, 1 + 64)
    grid = F.interpolate(pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(8, 8), mode="bicubic", align_corners=False)
    assert out.shape == (1, 65, 8) and torch.equal(out[:, 0], pos[:, 0])
    assert torch.allclose(out[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 64, 8))
    assert interpolate_pos_embed(pos, 17) is pos


def test_blip_at_224_loads_into_384_with_interpolated_positions(tmp_path):
    small = dataclasses.replace(TINY, image_size=32)  # 4x4 grid, as BLIP's 224 px
    torch.manual_seed(5)
    source = CandidateFilter(small)
    model, _ = load_filter(blip_checkpoint(source, tmp_path / "b.pth", extra=False), TINY)
    pos = model.state_dict()["visual_encoder.embeddings.position_embedding"]
    assert pos.shape == (1, 65, 96)
    assert torch.equal(pos, interpolate_pos_embed(source.state_dict()["visual_encoder.embeddings.position_embedding"], 65))


def test_model_info_paper_counts_match_the_documented_counts(capsys):
    assert main(["model-info", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["stage1"]["total"], info["stage1"]["trainable"]) == (223_742_721, 137_455_361)
    assert (info["stage2"]["total"], info["stage2"]["trainable"]) == (288_347_138, 202_256_642)
    assert info["stage2"]["parts"] == {"visual_encoder": 86_090_496, "text_encoder": 201_074_688, "cls_head": 1_181_954}
    assert main(["model-info", "--preset", "paper", "--json", "--set", "model.merge=full_mlp"]) == 0
    assert json.loads(capsys.readouterr().out)["stage2"]["total"] - 288_347_138 == 7_082_496
    assert main(["model-info", "--preset", "paper", "--json", "--set", "model.dual_ffn=true"]) == 0
    assert json.loads(capsys.readouterr().out)["stage2"]["total"] - 288_347_138 == 56_687_616
