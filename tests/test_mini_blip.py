"""The mini-BLIP: BLIP's ITC + ITM objectives, seeded pretraining, the float16 artifact."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from transformers import BlipForImageTextRetrieval

from cirtutor.config import apply_overrides, get_model_config, get_preset
from cirtutor.errors import CirtutorError
from cirtutor.engine import pretrain as pt
from cirtutor.models import mini_blip as mb
from cirtutor.models.tokenizer import tokenize_text_only

SMALL = ["data.synthetic_size=12", "data.synthetic_resolution=32", "data.resolution=32", "model.image_size=32"]
FAST = dict(steps=4, batch_size=8, eval_size=20, log=lambda _: None)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """Tiny preset on a 12-reference, 32 px synthetic world (72 train pairs) in a private cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRTUTOR_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield apply_overrides(get_preset("tiny"), SMALL)


@pytest.fixture(scope="module")
def pairs(cfg):
    images, captions, _ = pt.image_caption_pairs(pt.pretraining_data(cfg.data), "train")
    return images, *tokenize_text_only(captions)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def meta_for(cfg, **extra) -> dict:
    return {"model_config": dataclasses.asdict(cfg.model), **extra}


@torch.no_grad()
def outputs(model, images, input_ids, text_mask) -> list[torch.Tensor]:
    """ITC embeddings (image, text) and ITM logits of a few pairs, in eval mode."""
    model.eval()
    feats = mb.image_feats_of(model, images)
    return [*mb.itc_embeddings(model, feats, input_ids, text_mask), mb.itm_logits(model, input_ids, text_mask, feats)]


def test_model_is_transformers_blip_with_our_dims(cfg):
    model, temp = mb.build_mini_blip(cfg.model)
    assert isinstance(model, BlipForImageTextRetrieval)
    text = model.config.text_config
    assert (text.vocab_size, text.num_attention_heads, text.num_hidden_layers) == (30524, 4, 4)
    assert model.vision_proj.out_features == model.text_proj.out_features == cfg.model.embed_dim
    assert (model.itm_head.in_features, model.itm_head.out_features) == (cfg.model.text_width, 2)
    assert temp.item() == pytest.approx(cfg.model.temp) and temp.requires_grad


def test_pairs_are_preloaded_images_and_captions(cfg, pairs):
    images, input_ids, text_mask = pairs
    assert images.shape == (72, 3, 32, 32) and input_ids.shape == text_mask.shape and len(input_ids) == 72
    assert (input_ids[:, 0] == 101).all()  # unimodal mode keeps [CLS]
    ids, mask = pt.batch_tokens(input_ids, text_mask, torch.tensor([3, 5]))
    assert mask[:, -1].any() and ids.shape == mask.shape


def test_eval_pairs_are_whole_groups_with_sibling_negatives(cfg):
    images, input_ids, text_mask, neg_text, (edited_ids, _) = pt.eval_pairs(pt.pretraining_data(cfg.data), 20)
    assert len(images) == len(input_ids) == len(neg_text) == len(edited_ids) == 24  # 4 whole groups of 6 scenes
    assert (neg_text != torch.arange(24)).all() and (neg_text // 6 == torch.arange(24) // 6).all()
    again = pt.eval_pairs(pt.pretraining_data(cfg.data), 20)
    assert torch.equal(again[0], images) and torch.equal(again[3], neg_text)


@pytest.mark.slow
def test_losses_finite_and_decrease_on_a_fixed_batch(cfg, pairs):
    """From scratch both encoders first collapse to near-identical embeddings (ITC at ln 8)
    and escape after ~60 steps; ITM stays near its 1/3-positive prior much longer (as in
    the full run), so it is only checked to move below its initial value."""
    images, input_ids, text_mask = pairs
    idx = torch.arange(0, 48, 6)  # 8 scenes from 8 different groups
    torch.manual_seed(0)
    model, temp = mb.build_mini_blip(cfg.model)
    opt = torch.optim.AdamW([*model.parameters(), temp], lr=1e-3)
    losses = []
    for _ in range(90):
        loss_itc, loss_itm = pt.pretrain_losses(model, temp, images[idx], *pt.batch_tokens(input_ids, text_mask, idx))
        opt.zero_grad()
        (loss_itc + loss_itm).backward()
        opt.step()
        losses.append((loss_itc.item(), loss_itm.item()))
    itc, itm = torch.tensor(losses).T
    assert torch.isfinite(itc).all() and torch.isfinite(itm).all()
    assert itc[-10:].mean() < itc[:10].mean() - 0.3
    assert itm[-10:].mean() < itm[:10].mean()


def test_edited_captions_are_one_edit_away(cfg):
    from cirtutor.data import synthetic as world
    data = pt.pretraining_data(cfg.data)
    names = pt.pair_names(data, "train")
    _, captions, _ = pt.image_caption_pairs(data, "train")
    variants = pt.edited_captions(names[:10], captions[:10], per_image=3)
    assert variants == pt.edited_captions(names[:10], captions[:10], per_image=3)  # seeded
    for caption, row in zip(captions, variants):
        scene = world.parse_scene(caption)
        one_edit = {world.apply_edit(scene, e) for kind in world.possible_edits(scene).values() for e in kind}
        assert len(set(row)) == 3 and all(world.parse_scene(v) in one_edit for v in row)


def test_pretraining_continues_from_a_folder_with_edited_negatives(cfg, tmp_path):
    base = pt.pretrain_mini_blip(cfg, **FAST, eval_every=4)
    mb.save_mini_blip(base["model"], base["temp"], tmp_path / "base", base["meta"])
    more = pt.pretrain_mini_blip(cfg, **{**FAST, "steps": 2}, eval_every=2, init=tmp_path / "base", edited_negatives=2)
    recipe = more["meta"]["recipe"]
    assert recipe["edited_negatives"] == 2 and recipe["init"]["command"] == base["meta"]["command"]
    assert "itm_edit_acc" in more["metrics"] and not same_weights(params(base["model"]), params(more["model"]))


def test_sincos_positions_give_every_patch_its_own_code(cfg):
    codes = mb.sincos_2d(8, 96)
    assert codes.shape == (64, 96) and torch.allclose(codes.norm(dim=1), torch.full((64,), 48 ** 0.5))
    assert torch.cdist(codes, codes).add(torch.eye(64) * 100).min() > 0.1      # all 64 distinct
    model, _ = mb.build_mini_blip(cfg.model)
    before = model.vision_model.embeddings.position_embedding.detach().clone()
    mb.add_sincos_positions_(model, 2.0)
    after = model.vision_model.embeddings.position_embedding
    side = int((after.shape[1] - 1) ** 0.5)
    assert torch.equal(after[0, 0], before[0, 0])                               # [CLS] untouched
    torch.testing.assert_close(after[0, 1:] - before[0, 1:], 2.0 * mb.sincos_2d(side, after.shape[-1]))


def test_hard_negatives_never_equal_the_positive():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6, generator=g) * 5
    sim.fill_diagonal_(100.0)  # the positive dominates the softmax and must still never be drawn
    draws = torch.stack([pt.sample_hard_negatives(sim, g) for _ in range(300)])  # (300, 6)
    assert (draws != torch.arange(6)).all()
    assert len(draws.unique()) == 6  # every column is someone's negative


def test_hard_negatives_follow_the_similarity():
    sim = torch.zeros(4, 4)
    sim[0, 2] = 10.0  # text 2 is by far the most similar wrong text for image 0
    draws = torch.stack([pt.sample_hard_negatives(sim, torch.Generator().manual_seed(s)) for s in range(50)])
    assert (draws[:, 0] == 2).float().mean() > 0.9


@pytest.mark.parametrize("start, clamped", [(1.0, 0.5), (1e-5, 0.001), (0.07, 0.07)])
def test_temperature_is_clamped_to_blips_range(cfg, pairs, start, clamped):
    images, input_ids, text_mask = pairs
    model, temp = mb.build_mini_blip(cfg.model)
    temp.data.fill_(start)
    pt.pretrain_losses(model, temp, images[:4], *pt.batch_tokens(input_ids, text_mask, torch.arange(4)))
    assert temp.item() == pytest.approx(clamped)


def test_save_load_round_trip_is_exact_up_to_float16(cfg, pairs, tmp_path):
    images, input_ids, text_mask = pairs
    torch.manual_seed(1)
    model, temp = mb.build_mini_blip(cfg.model)
    mb.save_mini_blip(model, temp, tmp_path / "m", meta_for(cfg, step=7))
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 15e6

    loaded, loaded_temp, loaded_meta = mb.load_mini_blip(tmp_path / "m", cfg.model)
    assert next(loaded.parameters()).dtype == torch.float32
    assert loaded_temp.item() == pytest.approx(temp.item()) and loaded_meta["step"] == 7
    rounded = copy.deepcopy(model).half().float()
    assert same_weights(params(rounded), params(loaded))
    batch = images[:6], *pt.batch_tokens(input_ids, text_mask, torch.arange(6))
    for want, got in zip(outputs(rounded, *batch), outputs(loaded, *batch)):
        assert torch.equal(want, got)


def test_load_explains_missing_incomplete_and_mismatched_folders(cfg, tmp_path):
    with pytest.raises(CirtutorError, match="not a complete mini-BLIP folder"):
        mb.load_mini_blip(tmp_path / "nowhere")
    model, temp = mb.build_mini_blip(cfg.model)
    mb.save_mini_blip(model, temp, tmp_path / "m", meta_for(cfg))
    other = copy.deepcopy(cfg.model)
    other.text_layers = 2
    with pytest.raises(CirtutorError, match="text_layers: saved 4, requested 2"):
        mb.load_mini_blip(tmp_path / "m", other)
    (tmp_path / "m" / mb.META_FILE).unlink()
    with pytest.raises(CirtutorError, match="missing cirtutor.json"):
        mb.load_mini_blip(tmp_path / "m", cfg.model)


def test_pretraining_is_seeded_and_stop_after_reproduces_a_checkpoint(cfg, tmp_path):
    a = pt.pretrain_mini_blip(cfg, **FAST, eval_every=2, save_every=2, save_dir=tmp_path)
    b = pt.pretrain_mini_blip(cfg, **FAST, eval_every=4)
    assert same_weights(params(a["model"]), params(b["model"])) and a["temp"].item() == b["temp"].item()
    c = pt.pretrain_mini_blip(cfg, **FAST, eval_every=4, stop_after=2)
    checkpoint, temp, meta = mb.load_mini_blip(tmp_path / "step_0002", cfg.model)
    assert same_weights(params(c["model"].half().float()), params(checkpoint))
    assert meta["step"] == 2 and "--stop-after 2" in meta["command"] and temp.item() == pytest.approx(c["temp"].item())
    assert [e["step"] for e in a["evals"]] == [2, 4] and set(a["metrics"]) >= {"i2t_r1", "t2i_r10", "itm_acc"}


def test_pretrained_mini_blip_builds_once_then_loads(cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pt, "SHIPPED", tmp_path / "not_shipped")
    monkeypatch.setattr(pt, "RECIPE", dict(steps=2, stop_after=None, batch_size=8, lr=1e-3, seed=0))
    monkeypatch.setattr(pt, "GROUNDING", dict(steps=1, stop_after=None, batch_size=8, lr=1e-3, seed=0,
                                              edited_negatives=2, sincos_positions=1.0))
    monkeypatch.setattr(pt, "NARROWING", dict(from_dim=2 * cfg.model.embed_dim, steps=1, stop_after=None, batch_size=8,
                                              lr=1e-3, seed=0, edited_negatives=2))
    built, _, meta = pt.pretrained_mini_blip(cfg)
    out = capsys.readouterr().out
    assert "building pretrained mini-BLIP" in out and meta["step"] == 1 and "narrowed the ITC projections" in out
    grounded = meta["recipe"]["init"]                                  # phase 3 continued phase 2, which continued 1
    assert grounded["recipe"]["sincos_positions"] == 1.0 and grounded["recipe"]["init"]["recipe"]["steps"] == 2
    assert meta["model_config"]["embed_dim"] == cfg.model.embed_dim and meta["recipe"]["steps"] == 1
    loaded, _, _ = pt.pretrained_mini_blip(cfg)
    assert "found pretrained mini-BLIP" in capsys.readouterr().out
    assert same_weights(params(built), params(loaded))


def test_pretrained_mini_blip_prefers_a_matching_shipped_copy(cfg, tmp_path, monkeypatch, capsys):
    model, temp = mb.build_mini_blip(cfg.model)
    mb.save_mini_blip(model, temp, tmp_path / "shipped", meta_for(cfg, step=99))
    monkeypatch.setattr(pt, "SHIPPED", tmp_path / "shipped")
    assert pt.pretrained_mini_blip(cfg)[2]["step"] == 99
    assert capsys.readouterr().out == "found pretrained mini-BLIP, loading…\n"


def test_pretrain_tiny_command(cfg, tmp_path, capsys):
    argv = ["--steps", "2", "--batch-size", "8", "--eval-every", "2", "--out", str(tmp_path / "run")]
    assert pt.pretrain_tiny_main(argv + sum((["--set", s] for s in SMALL), [])) == 0
    assert "i2t R@1/5/10" in capsys.readouterr().out
    _, _, meta = mb.load_mini_blip(tmp_path / "run", cfg.model)
    assert meta["command"].startswith("cirtutor pretrain-tiny --preset tiny --steps 2 --batch-size 8")
    assert json.loads((tmp_path / "run" / "history.json").read_text())["evals"][-1]["step"] == 2
    assert pt.pretrain_tiny_main(argv + ["--set", "model.nonsense=1"]) == 2


@pytest.mark.skipif(not (mb.SHIPPED / mb.META_FILE).is_file(), reason="no shipped mini-BLIP")
def test_shipped_mini_blip_fits_the_tiny_preset():
    size = sum(f.stat().st_size for f in mb.SHIPPED.iterdir())
    assert size <= 15 * 2**20
    model, temp, meta = mb.load_mini_blip(mb.SHIPPED, get_model_config("tiny"))
    assert mb.TEMP_MIN <= temp.item() <= mb.TEMP_MAX
    assert meta["command"].startswith("cirtutor pretrain-tiny") and meta["metrics"]["itm_acc"] > 0.5


def test_narrowing_the_projections_keeps_the_embedding_space_it_can(cfg, pairs):
    """narrow_projections_: the new d -> dim maps are P^T W with P the top singular directions of
    the sample's embeddings, so with dim at the embeddings' rank every normalised dot product is kept."""
    model, _ = mb.build_mini_blip(cfg.model)
    model.eval()
    images, ids, mask = pairs
    feats = mb.image_feats_of(model, images[:20])
    before = torch.cat(mb.itc_embeddings(model, feats, *pt.batch_tokens(ids, mask, torch.arange(20))))  # (40, e)
    rank = int(torch.linalg.matrix_rank(before))
    p = mb.narrow_projections_(model, rank, feats, *pt.batch_tokens(ids, mask, torch.arange(20)))
    after = torch.cat(mb.itc_embeddings(model, feats, *pt.batch_tokens(ids, mask, torch.arange(20))))   # (40, rank)
    assert after.shape[1] == rank == p.shape[1] and model.config.image_text_hidden_size == rank
    norms = (before @ p).norm(dim=1, keepdim=True)                      # the kept part of each unit embedding
    torch.testing.assert_close(after, (before @ p) / norms, atol=1e-4, rtol=1e-4)


def test_pretraining_can_narrow_a_wider_mini_blip(cfg, tmp_path):
    base = pt.pretrain_mini_blip(cfg, **FAST, eval_every=4)
    mb.save_mini_blip(base["model"], base["temp"], tmp_path / "base", base["meta"])
    narrow = apply_overrides(cfg, [f"model.embed_dim={cfg.model.embed_dim // 2}"])
    logs = []
    more = pt.pretrain_mini_blip(narrow, **{**FAST, "steps": 2, "log": logs.append}, eval_every=2, init=tmp_path / "base")
    assert more["model"].vision_proj.out_features == cfg.model.embed_dim // 2
    assert any("narrowed the ITC projections" in line for line in logs)
    mb.save_mini_blip(more["model"], more["temp"], tmp_path / "narrow", more["meta"])
    assert mb.load_mini_blip(tmp_path / "narrow", narrow.model)[0].text_proj.out_features == cfg.model.embed_dim // 2


def test_an_own_mini_blip_can_be_chosen_by_environment(cfg, tmp_path, monkeypatch, capsys):
    base = pt.pretrain_mini_blip(cfg, **FAST, eval_every=4)
    mb.save_mini_blip(base["model"], base["temp"], tmp_path / "own", base["meta"])
    monkeypatch.setenv("CIRTUTOR_MINI_BLIP", str(tmp_path / "own"))
    assert pt.mini_blip_folder(cfg) == tmp_path / "own" and "CIRTUTOR_MINI_BLIP" in capsys.readouterr().out
    with pytest.raises(CirtutorError, match="other model dims"):
        pt.mini_blip_folder(apply_overrides(cfg, ["model.embed_dim=16"]))
    monkeypatch.setenv("CIRTUTOR_MINI_BLIP", str(tmp_path / "missing"))
    with pytest.raises(CirtutorError, match="not a complete mini-BLIP folder"):
        pt.mini_blip_folder(cfg)
