"""Zero-shot CIR with pseudo words (docs/extensions.md, 'Zero-shot', 'Checks'): the placeholder substitution,
zero-initialised injections and adapters, seeded Stage I/II training on a small world, the
hard-negative mining and the saved trainable parts."""
import pytest
import torch

from cirtutor.config import ZeroShotConfig, get_model_config
from cirtutor.errors import CirtutorError
from cirtutor.models import CandidateFilter
from cirtutor.models.tokenizer import blip_tokenizer, tokenize_text_only
from cirtutor.models.zeroshot import ZeroShotEncoder, insert_pseudo_words, placeholder_id, prompts

TINY = get_model_config("tiny")


class EpochRecorder:
    """A dataset as it is, that records the epochs it is set to (Fashion-IQ draws its training texts per epoch)."""

    def __init__(self, dataset):
        self.dataset, self.epochs = dataset, []

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def encoder(cfg: ZeroShotConfig | None = None, seed: int = 0) -> ZeroShotEncoder:
    torch.manual_seed(seed)
    filt = CandidateFilter(TINY)
    return ZeroShotEncoder(filt.text_encoder, filt.text_proj, filt.vision_proj, 0.07, cfg or ZeroShotConfig()).eval()


def test_prompts_and_the_placeholder_token():
    assert prompts(["make it red"], "a photo of $ that {text}") == ["a photo of $ that make it red"]
    assert prompts(["x"], "a photo of $ that {text}", k=3) == ["a photo of $ $ $ that x"]
    ids, _ = tokenize_text_only(prompts(["make it red"], "a photo of $ that {text}"))
    assert (ids == placeholder_id()).sum() == 1 and ids[0, 4] == placeholder_id()   # [CLS] a photo of $
    with pytest.raises(ValueError, match="exactly one"):
        prompts(["x"], "a photo of {text}")


def test_the_pseudo_word_replaces_the_placeholder_before_position_embeddings():
    model = encoder()
    ids, mask = tokenize_text_only(["a photo of $ that make it red", "$ is blue"])
    words = torch.randn(2, 1, 96)
    embeds = insert_pseudo_words(model.text_encoder.embeddings.word_embeddings, ids, words)   # (B, L, d)
    plain = model.text_encoder.embeddings.word_embeddings(ids)
    slot = ids == placeholder_id()
    assert torch.equal(embeds[slot], words[:, 0]) and torch.equal(embeds[~slot], plain[~slot])
    emb = model.text_encoder.embeddings
    out = emb(inputs_embeds=embeds.clone())                      # + position embeddings, LayerNorm
    pos = slot.nonzero()                                         # (row, position) of each "$"
    for (b, p), w in zip(pos.tolist(), words[:, 0]):
        expected = emb.LayerNorm(w + emb.position_embeddings.weight[p])
        assert torch.allclose(out[b, p], expected, atol=1e-5)   # the word got the position of "$" (4, then 1)
    assert pos[:, 1].tolist() == [4, 1]
    with pytest.raises(ValueError, match="2 '\\$' tokens"):
        insert_pseudo_words(emb.word_embeddings, ids, torch.randn(2, 2, 96))


def test_zero_initialised_injection_and_adapters_leave_the_baseline_unchanged():
    V = torch.randn(3, 65, 96)
    texts = ["add a red circle", "make it blue", "remove the star"]
    with torch.no_grad():
        base = encoder(ZeroShotConfig()).query_embed(texts, V)
        model = encoder(ZeroShotConfig(inject_layers=2))              # the same seed: the same phi
        injected = model.query_embed(texts, V)
        model.add_adapters()
        adapted = model.query_embed(texts, V)
    assert torch.equal(base, injected) and torch.equal(base, adapted)
    assert len(model.injections) == 2 and sorted(model.injections) == ["2", "3"]     # the top two of 4 layers
    assert len(model.adapters) == 4 and not any(p.requires_grad for n, p in model.named_parameters()
                                                if not n.startswith("adapters."))
    ids, mask = tokenize_text_only(prompts(texts, "a photo of $ that {text}"))
    slot = ids == placeholder_id()
    inputs = []
    model.text_encoder.encoder.layer[3].register_forward_pre_hook(lambda m, a: inputs.append(a[0]))  # after the injection
    with torch.no_grad():
        words = model.pseudo_words(V)
        before = model.text_embed(ids, mask, words, V)
        model.injections["3"].gate.fill_(1.0)                     # opened into the last layer: only "$" changes there
        after = model.text_embed(ids, mask, words, V)
    assert torch.equal(inputs[0][~slot], inputs[1][~slot]) and not torch.equal(inputs[0][slot], inputs[1][slot])
    assert not torch.allclose(before, after)                      # and the last layer's self-attention carries it to [CLS]


def test_only_the_new_parts_train_and_the_backbone_is_frozen():
    model = encoder(ZeroShotConfig(mapper="tokens", k=2, inject_layers=1))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"mapper", "injections"}
    assert model.pseudo_words(torch.randn(2, 65, 96)).shape == (2, 2, 96)
    with pytest.raises(ValueError, match="mapper='tokens'"):
        encoder(ZeroShotConfig(k=2))
    with pytest.raises(ValueError, match="inject_layers=9"):
        encoder(ZeroShotConfig(inject_layers=9))


SMALL = ["data.synthetic_size=20"]


@pytest.fixture(scope="module")
def world(small_world):
    return small_world(SMALL)


def stage1(world, cfg, seed):
    from cirtutor.engine.zeroshot import train_mapping

    _, filt, train, _, store, _ = world
    torch.manual_seed(123)                                        # the caller's state must not matter
    model = ZeroShotEncoder(filt.text_encoder, filt.text_proj, filt.vision_proj, 0.07, cfg)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ZeroShotEncoder(filt.text_encoder, filt.text_proj, filt.vision_proj, 0.07, cfg)
    captions = {n: f"scene {i % 7}" for i, n in enumerate(train.gallery)}
    history = train_mapping(model, store, list(train.gallery), cfg, captions=captions, seed=seed, log=lambda _: None,
                            progress=False)
    return model, history


def test_seeded_stage_one_is_deterministic_and_learns(world):
    from cirtutor.engine.zeroshot import trainable_state

    cfg = ZeroShotConfig(epochs=2, batch_size=16, soft_weight=0.5, inject_layers=1)
    a, history = stage1(world, cfg, seed=0)
    b, _ = stage1(world, cfg, seed=0)
    sa, sb = trainable_state(a), trainable_state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(k.startswith("injections.") for k in sa) and len(history.train) > 2
    c, _ = stage1(world, cfg, seed=1)
    assert not torch.equal(trainable_state(c)["mapper.net.0.weight"], sa["mapper.net.0.weight"])


def test_stage_two_uses_its_budget_and_mined_negatives_and_saves_what_it_trained(world, tmp_path):
    from cirtutor.engine.zeroshot import (budget_queries, load_zeroshot, mine_hard_negatives, save_zeroshot,
                                          train_composing)

    _, filt, train, _, store, _ = world
    assert budget_queries(200, 0.05, seed=3) == budget_queries(200, 0.05, seed=3) and len(budget_queries(200, 0.05, 3)) == 10
    with pytest.raises(CirtutorError, match="budget"):
        budget_queries(200, 0.0, 0)
    cfg = ZeroShotConfig(epochs=1, batch_size=16, budget=0.5, hard_negatives=3, stage2_epochs=2, stage2_batch_size=8)
    model, _ = stage1(world, cfg, seed=0)
    negatives = mine_hard_negatives(model, train, store, [0, 1, 2], h=3)
    assert all(len(n) == 3 and train.queries[i]["target"] not in n for i, n in zip([0, 1, 2], negatives))
    recording = EpochRecorder(train)
    history, used = train_composing(model, recording, store, cfg, seed=0, log=lambda _: None, progress=False)
    assert len(used) == round(0.5 * len(train.queries)) and len(history.train) >= 2
    assert recording.epochs[0] == 0 and set(recording.epochs) == {0, 1}    # mined at epoch 0, texts drawn per epoch
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("adapters.") and "up" in n)
    save_zeroshot(model, tmp_path / "z.safetensors")
    again = ZeroShotEncoder(filt.text_encoder, filt.text_proj, filt.vision_proj, 0.07, cfg)
    load_zeroshot(again, tmp_path / "z.safetensors")
    V = store[[train.queries[0]["reference"]]]
    with torch.no_grad():
        assert torch.allclose(again.eval().query_embed(["make it red"], V), model.eval().query_embed(["make it red"], V))
    with pytest.raises(CirtutorError, match="does not fit"):
        load_zeroshot(encoder(ZeroShotConfig(mapper="tokens", k=2)), tmp_path / "z.safetensors")


def test_zero_shot_evaluation_is_the_filters_with_other_queries(world):
    from cirtutor.engine.stage1 import evaluate_filter
    from cirtutor.engine.zeroshot import evaluate_zeroshot, query_embeddings

    _, filt, _, val, _, store = world
    model = encoder()
    m = evaluate_zeroshot(model, val, store)
    again = evaluate_filter(model, val, store, embed=lambda idx: query_embeddings(model, val, store, list(idx)))
    assert m == again and {"R@1", "R@5", "R@10", "R@50", "Rs@1"} <= set(m)


def test_without_image_words_the_placeholder_carries_no_image():
    model = encoder()
    texts = ["add a red circle", "make it blue"]
    V, W = torch.randn(2, 65, 96), torch.randn(2, 65, 96)
    with torch.no_grad():
        with model.without_image_words():
            blank, blank_other = model.query_embed(texts, V), model.query_embed(texts, W)
        ids, mask = tokenize_text_only(prompts(texts, model.cfg.query_template))
        zeros = model.text_embed(ids, mask, torch.zeros(2, 1, 96))
        normal = model.query_embed(texts, V)
    assert torch.equal(blank, blank_other) and torch.equal(blank, zeros)      # the image no longer matters
    assert not torch.allclose(normal, blank) and not model._blank             # and the switch is off again


def test_removing_phi_lowers_zero_shot_recall_at_1():
    """The shipped seed-0 Pic2Word baseline of the tiny preset (notebook 09's), on the tiny
    validation split (built into the cache once, shared with the notebooks): it scores what it recorded,
    and with its pseudo word replaced by the zero vector ("a photo of <nothing> that {text}") R@1 falls."""
    from cirtutor.data.registry import open_dataset
    from cirtutor.engine.zeroshot import evaluate_zeroshot
    from cirtutor.features import feature_store, init_weights
    from cirtutor.study import variant_config
    from cirtutor.trained import trained_zeroshot

    cfg = variant_config("zeroshot", "baseline")                               # as the zero-shot study ran it
    model, recorded = trained_zeroshot(cfg, verbose=False)                    # the shipped copy: no training
    val = open_dataset(cfg.data, "val")
    store = feature_store(cfg, "val", init_weights(cfg, verbose=False), "cpu")
    with torch.no_grad():
        measured = evaluate_zeroshot(model, val, store)
        with model.without_image_words():
            blank = evaluate_zeroshot(model, val, store)
    assert measured["R@1"] == pytest.approx(recorded["R@1"], abs=0.21)          # one query of 500 either way
    assert blank["R@1"] < measured["R@1"] and blank["R@10"] < measured["R@10"]


def test_the_looking_inside_helpers(world):
    from cirtutor.engine.zeroshot import image_prompt_recall, nearest_words, query_alignment

    _, filt, _, val, _, store = world
    model = encoder()
    emb = model.text_encoder.embeddings.word_embeddings.weight
    red, circle = blip_tokenizer().convert_tokens_to_ids(["red", "circle"])
    near = nearest_words(model, torch.stack([emb[red], -emb[circle]])[:, None], ["circle", "red", "blue", "circles!"], k=4)
    assert near[0][0] == ("red", 1.0) and near[1][-1] == ("circle", -1.0)
    assert len(near[0]) == 3                                 # "circles!" is not one WordPiece: left out
    names = list(val.gallery)
    assert 0 <= image_prompt_recall(model, store, names) <= 100
    with model.without_image_words():                       # every prompt the same: one image can be first
        assert image_prompt_recall(model, store, names) == pytest.approx(100 / len(names))
    align = query_alignment(model, val, store)
    assert set(align) == {"cos(q, reference)", "cos(q, target)", "closer to target (%)"}
    assert -1 <= align["cos(q, target)"] <= 1 and 0 <= align["closer to target (%)"] <= 100
    halves = [query_alignment(model, val, store, indices=part) for part in (range(0, 3), range(3, len(val.queries)))]
    pooled = (3 * halves[0]["cos(q, target)"] + (len(val.queries) - 3) * halves[1]["cos(q, target)"]) / len(val.queries)
    assert pooled == pytest.approx(align["cos(q, target)"], abs=1e-5)       # a subset's means pool to the whole
