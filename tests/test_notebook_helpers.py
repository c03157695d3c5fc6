"""The helpers behind notebooks 01 and 03 (cirtutor.inspect_layers and the model-inside
figures of cirtutor.viz): hand-written attention equals the modules, replayed layers equal
the encoder, BLIP's layout loads exactly, and the figures draw what they claim."""
import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from cirtutor.config import get_model_config
from cirtutor.inspect_layers import (attention_by_hand, attention_per_cell, blip_cross_attention, dual_cross_attention,
                                     dual_layer_states, load_blip_retrieval, patch_maps, stream_similarity,
                                     streams_identical)
from cirtutor.models import DualEncoderReranker, tokenize
from cirtutor.models.backbones import build_text_encoder
from cirtutor.models.loading import CheckpointError, reranker_state_from_stage1, vision_key_to_original
from cirtutor.models.mini_blip import (META_FILE, SHIPPED, build_mini_blip, image_feats_of, itc_embeddings, itm_logits,
                                      save_mini_blip)
from cirtutor.models.reranker import Attention
from cirtutor.viz import (plot_per_layer, plot_pretraining_curve, plot_similarity_matrix, plot_token_attention,
                          show_patch_grid)

TINY = get_model_config("tiny")  # d = 96, 4 text layers, 4 heads, 64 px / patch 8: L_v = 65
TEXTS = ["make the red circle blue", "add a small square at the top left"]


def reranker(seed=0, **kw):
    torch.manual_seed(seed)
    return DualEncoderReranker(dataclasses.replace(TINY, **kw)).eval()


def pair_inputs(seed=0):
    """Two padded queries (ids, mask (2, L)), z_t (2, L, 96) and candidate tokens V (2, 65, 96)."""
    g = torch.Generator().manual_seed(seed)
    ids, mask = tokenize(TEXTS)
    return ids, mask, torch.randn(*ids.shape, 96, generator=g), torch.randn(2, 65, 96, generator=g)


def duplicated_from_blip(model, blip_text):
    """`model`'s streams loaded from one BLIP text encoder by the duplication rule (docs/authors_code.md, 'The duplication rule')."""
    state = {f"text_encoder.{k}": v for k, v in blip_text.state_dict().items()}
    model.load_state_dict(reranker_state_from_stage1(state, model.cfg, {}), strict=False)
    return model


# ----------------------------------------------------------------------------- attention and layers

def test_attention_by_hand_equals_the_module_and_respects_the_mask():
    torch.manual_seed(0)
    attn = Attention(width=16, heads=4, kv_width=8, dropout=0.5).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False                                  # the second item's last 3 keys are padding
    out, probs = attention_by_hand(attn, x, context, mask)
    torch.testing.assert_close(out, attn(x, context, mask))
    torch.testing.assert_close(attention_by_hand(attn, x, context)[0], attn(x, context))
    assert probs.shape == (2, 4, 5, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert probs[1, ..., 4:].abs().max() == 0 and probs[0, ..., 4:].min() > 0


def test_dual_layer_states_replay_the_encoder_layer_by_layer():
    model = reranker()
    ids, mask, z_t, V = pair_inputs()
    states = dual_layer_states(model, ids, mask, z_t, V)
    assert len(states) == TINY.text_layers + 1 and states[0][0] is z_t
    with torch.no_grad():
        A, B = model.text_encoder(z_t, ids, mask, mask, V)
        for l, layer in enumerate(model.text_encoder.encoder.layer):  # each entry is the previous one's layer output
            A_l, B_l = layer(*states[l], V, mask[:, None, None].bool(), mask[:, None, None].bool())
            torch.testing.assert_close((A_l, B_l), states[l + 1])
    torch.testing.assert_close((A, B), states[-1])


def test_text_stream_cross_attention_is_blips_and_both_streams_are_distributions():
    torch.manual_seed(1)
    blip_text = build_text_encoder(TINY).eval()
    ids, mask, z_t, V = pair_inputs()
    text_only = duplicated_from_blip(reranker(streams="text"), blip_text)
    probs_A, probs_B = dual_cross_attention(text_only, ids, mask, z_t, V)
    assert probs_A is None
    real = lambda p: p.transpose(2, 3)[:, mask.bool()]  # noqa: E731  (layers, P, heads, L, L_v) -> real tokens only
    torch.testing.assert_close(real(probs_B), real(blip_cross_attention(blip_text, ids, mask, V)))

    probs_A, probs_B = dual_cross_attention(reranker(), ids, mask, z_t, V)
    for p in (probs_A, probs_B):
        assert p.shape == (TINY.text_layers, 2, TINY.text_heads, ids.shape[1], 65)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert not torch.allclose(probs_A, probs_B, atol=1e-3)  # different inputs, different queries


def test_streams_identical_and_stream_similarity():
    torch.manual_seed(1)
    model = duplicated_from_blip(reranker(), build_text_encoder(TINY).eval())
    assert streams_identical(model) and all(streams_identical(layer) for layer in model.text_encoder.encoder.layer)
    assert not streams_identical(reranker())                     # fresh streams: independent random weights
    assert not streams_identical(torch.nn.Linear(2, 2))          # nothing to compare

    ids, mask, z_t, V = pair_inputs()
    B0 = model.text_encoder.embeddings(input_ids=ids)
    same = dual_layer_states(model, ids, mask, B0, V)             # identical inputs, identical weights
    torch.testing.assert_close(stream_similarity(same, mask), torch.ones(TINY.text_layers + 1))
    assert stream_similarity(dual_layer_states(model, ids, mask, z_t, V), mask)[0] < 0.5
    with torch.no_grad():
        model.text_encoder.encoder.layer[1].crossattention.output.LayerNormB.bias.add_(torch.randn(96))
    assert not streams_identical(model)
    sim = stream_similarity(dual_layer_states(model, ids, mask, B0, V), mask)
    torch.testing.assert_close(sim[:2], torch.ones(2))         # equal up to the perturbed layer, apart after it
    assert sim[2] < 0.9999

    A = torch.randn(1, 3, 8)
    B = torch.cat([A[:, :2], -A[:, 2:]], dim=1)                   # equal except at a padded position
    torch.testing.assert_close(stream_similarity([(A, B)], torch.tensor([[1, 1, 0]])), torch.ones(1))


def test_patch_maps_are_raster_order_and_cells_partition_them():
    probs = torch.zeros(3, 65)
    probs[0, 1], probs[1, 1 + 7], probs[2, 1 + 8 * 7 + 3] = 1, 1, 1  # patches (0, 0), (0, 7), (7, 3)
    maps = patch_maps(probs)
    assert maps.shape == (3, 8, 8)
    assert maps[0, 0, 0] == maps[1, 0, 7] == maps[2, 7, 3] == 1
    cells = attention_per_cell(maps)
    assert cells.shape == (3, 3, 3) and cells[0, 0, 0] == cells[1, 0, 2] == cells[2, 2, 1] == 1
    rand = torch.rand(2, 8, 8)
    torch.testing.assert_close(attention_per_cell(rand).sum((-1, -2)), rand.sum((-1, -2)))
    with pytest.raises(ValueError, match="square grid"):
        patch_maps(torch.zeros(11))


# ----------------------------------------------------------------------------- BLIP with its heads

def blip_layout(model, temp) -> dict:
    """`model` (BlipForImageTextRetrieval) as BLIP's model_base.pth holds it, with pre-training-only keys."""
    rename = lambda k: vision_key_to_original("visual_encoder." + k.removeprefix("vision_model."))
    state = {(rename(k) if k.startswith("vision_model.") else k): v for k, v in model.state_dict().items()}
    state |= {"temp": torch.tensor(temp), "text_encoder.embeddings.position_ids": torch.arange(64)[None],
              "visual_encoder_m.cls_token": torch.zeros(1, 1, 96), "image_queue": torch.zeros(64, 8),
              "text_decoder.bert.embeddings.word_embeddings.weight": torch.zeros(3, 96)}
    return {"model": state}


@torch.no_grad()
def heads_outputs(model) -> tuple[torch.Tensor, ...]:
    """ITC embeddings (image, text) and ITM logits of two fixed pairs."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids, mask = tokenize(TEXTS)
    feats = image_feats_of(model, images)
    return (*itc_embeddings(model, feats, ids, mask), itm_logits(model, ids, mask, feats))


def test_load_blip_retrieval_reads_blips_layout_exactly(tmp_path):
    torch.manual_seed(0)
    source, _ = build_mini_blip(TINY)
    source.eval()
    torch.save(blip_layout(source, 0.0423), tmp_path / "model_base.pth")
    loaded, temp = load_blip_retrieval(tmp_path / "model_base.pth", TINY)
    assert not loaded.training and temp.item() == pytest.approx(0.0423)
    for want, got in zip(heads_outputs(source), heads_outputs(loaded)):
        assert torch.equal(want, got)

    for key, message in (("mystery.weight", "unexpected BLIP key 'mystery.weight'"),
                         ("text_encoder.pooler.dense.weight", "does not fit a BLIP of these dims")):
        bad = blip_layout(source, 0.05)
        bad["model"][key] = torch.zeros(96, 96)
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(CheckpointError, match=message):
            load_blip_retrieval(tmp_path / "bad.pth", TINY)


def test_load_blip_retrieval_resizes_positions_and_reads_a_mini_blip_folder(tmp_path):
    small = dataclasses.replace(TINY, image_size=32)                     # 1 + 4 x 4 position slots
    torch.manual_seed(0)
    source, temp = build_mini_blip(small)
    torch.save(blip_layout(source, 0.05), tmp_path / "model_base.pth")
    loaded, _ = load_blip_retrieval(tmp_path / "model_base.pth", TINY)   # 64 px: 1 + 8 x 8
    pos = loaded.vision_model.embeddings.position_embedding
    assert pos.shape == (1, 65, 96) and torch.equal(pos[:, 0], source.vision_model.embeddings.position_embedding[:, 0])

    save_mini_blip(source, temp, tmp_path / "mini", {"model_config": dataclasses.asdict(small)})
    loaded, loaded_temp = load_blip_retrieval(tmp_path / "mini", small)
    assert not loaded.training and loaded_temp.item() == pytest.approx(temp.item())


# ----------------------------------------------------------------------------- figures

def test_show_patch_grid_numbers_every_patch():
    fig = show_patch_grid(torch.zeros(3, 64, 64), patch_size=8)
    ax = fig.axes[0]
    assert len(ax.texts) == 64 and ax.texts[-1].get_text() == "64"
    assert ax.get_title().startswith("8×8 = 64 patches of 8×8 px")


def test_plot_token_attention_one_row_per_map_one_column_per_token():
    maps = {"stream A": torch.rand(3, 8, 8), "stream B": torch.rand(3, 8, 8)}
    fig = plot_token_attention(torch.zeros(3, 64, 64), ["red", "circle", "top"], maps, title="t")
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 * 4                                  # plain image + 3 tokens, per row
    assert [ax.get_title() for ax in image_axes[:4]] == ["image", "red", "circle", "top"]
    assert image_axes[4].get_ylabel() == "stream B"


def test_plot_similarity_matrix_writes_every_value_and_frames_the_diagonal():
    sim = torch.arange(12.0).view(3, 4) / 10
    fig = plot_similarity_matrix(sim, ["a", "b", "c"], ["w", "x", "y", "z"], images=torch.zeros(4, 3, 16, 16))
    main = next(ax for ax in fig.axes if len(ax.texts) == 12)
    assert main.texts[5].get_text() == "0.50" and len(main.patches) == 3
    assert sum(1 for ax in fig.axes if ax.images and not ax.texts) == 4  # the column thumbnails
    assert len(plot_similarity_matrix(sim, ["a", "b", "c"], list("wxyz")).axes) == 2  # matrix + colorbar


def test_plot_pretraining_curve_of_the_shipped_record():
    meta = json.loads((SHIPPED / META_FILE).read_text())
    fig = plot_pretraining_curve(meta)
    losses, evals, temps = fig.axes
    assert losses.lines[2].get_ydata()[0] == pytest.approx(4.1589, abs=1e-3)  # ln 64
    assert len(evals.lines[0].get_xdata()) == len(meta["curve"]["val"])
    assert temps.get_yscale() == "log"
    n_edit = sum("itm_edit_acc" in r for r in meta["curve"]["val"])             # the grounding phase's evaluations
    starts = meta["curve"].get("phase_start") or []
    starts = starts if isinstance(starts, list) else [starts]
    assert len(evals.lines) == 3 + (n_edit > 0) + len(starts)         # + a marker per later phase
    assert len(losses.lines) == 4 + len(starts)
    assert [line.get_xdata()[0] for line in losses.lines[4:]] == starts


def test_plot_per_layer_labels_layer_inputs_and_output():
    fig = plot_per_layer({"a": [0.1, 0.5, 0.9], "b": [1, 1, 1]}, "cos", "t", mark=0.5, mark_label="split")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["in 0", "in 1", "out"]
    assert len(ax.lines) == 3
