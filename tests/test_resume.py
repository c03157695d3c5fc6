"""Checkpoints and --resume: a run killed mid-epoch and resumed ends exactly like an
uninterrupted one (weights, loss history and metrics), for both stages (tiny dims)."""
import pytest
import torch

from cirtutor.config import apply_overrides
from cirtutor.engine.loop import ResumeError, load_checkpoint
from cirtutor.engine.stage1 import encode_queries, evaluate_filter, filter_topk, train_stage1
from cirtutor.engine.stage2 import evaluate_reranker, hard_pools, train_stage2
from cirtutor.models import CandidateFilter, DualEncoderReranker

SMALL = ["data.synthetic_size=6", "data.synthetic_resolution=32", "data.resolution=32", "model.image_size=32",
         "stage1.batch_size=5", "stage1.epochs=2", "stage1.lr=1e-3", "stage1.checkpoint_every=2",
         "stage2.batch_size=6", "stage2.epochs=2", "stage2.hard_pool=10", "stage2.checkpoint_every=2"]
QUIET = dict(log=lambda _: None, progress=False)


@pytest.fixture(scope="module")
def world(small_world):
    cfg, filt, *rest = small_world(SMALL)
    return cfg, filt.state_dict(), *rest


def fresh_filter(cfg, init):
    model = CandidateFilter(cfg.model)
    model.load_state_dict(init)
    return model


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("aux", ["none", "cala"])
def test_stage1_killed_mid_epoch_resumes_to_the_same_end(world, tmp_path, aux):
    """With CaLa, its training-only modules resume too (the checkpoint's "extra")."""
    cfg, init, train, val, st, sv = world
    cfg = apply_overrides(cfg, [f"stage1.aux={aux}"])
    steps_per_epoch = len(train.queries) // cfg.stage1.batch_size
    kill_at = steps_per_epoch + 3                     # mid-epoch 1, one step after the checkpoint at an even step
    assert kill_at % 2 == 1 and 3 < steps_per_epoch

    whole = fresh_filter(cfg, init)
    h_whole = train_stage1(whole, train, st, cfg.stage1, seed=3, **QUIET)

    ckpt = tmp_path / "last.pt"
    killed = fresh_filter(cfg, init)
    train_stage1(killed, train, st, cfg.stage1, seed=3, checkpoint=ckpt, stop_after=kill_at, **QUIET)
    blob = load_checkpoint(ckpt)
    assert blob["position"] == {"epoch": 1, "step_in_epoch": 2, "step": kill_at - 1}
    assert bool(blob["extra"]) == (aux == "cala") and not any(k.startswith("cala") for k in blob["model"])

    resumed = CandidateFilter(cfg.model)              # weights, optimizer, RNG all come from the checkpoint
    h_resumed = train_stage1(resumed, train, st, cfg.stage1, seed=3, checkpoint=ckpt, resume=True, **QUIET)
    assert h_resumed.train == h_whole.train
    assert states_equal(resumed, whole)
    assert evaluate_filter(resumed, val, sv) == evaluate_filter(whole, val, sv)
    assert not states_equal(resumed, fresh_filter(cfg, init))   # it did train


def test_stage2_killed_mid_epoch_resumes_to_the_same_end(world, tmp_path):
    cfg, init, train, val, st, sv = world
    filt = fresh_filter(cfg, init)
    _, z_ts = encode_queries(filt, train, st)
    pools = hard_pools(filt, train, st, cfg.stage2.hard_pool)
    run = lambda model, **kw: train_stage2(model, train, z_ts, st, cfg.stage2, pools=pools, seed=1, **QUIET, **kw)

    torch.manual_seed(0)
    whole = DualEncoderReranker(cfg.model)
    whole.visual_encoder.load_state_dict(filt.visual_encoder.state_dict())    # the ViT the features came from
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    h_whole = run(whole)

    ckpt = tmp_path / "stage2.pt"
    killed = DualEncoderReranker(cfg.model)
    killed.load_state_dict(start)
    run(killed, checkpoint=ckpt, stop_after=len(h_whole.train) - 2)
    resumed = DualEncoderReranker(cfg.model)
    h_resumed = run(resumed, checkpoint=ckpt, resume=True)
    assert h_resumed.train == h_whole.train and states_equal(resumed, whole)
    lists = filter_topk(filt, val, sv)
    assert evaluate_reranker(filt, resumed, val, sv, lists, ks=(5,)) == evaluate_reranker(filt, whole, val, sv, lists,
                                                                                          ks=(5,))


def test_resume_refuses_a_missing_or_foreign_checkpoint(world, tmp_path):
    cfg, init, train, _, st, _ = world
    with pytest.raises(ResumeError, match="no checkpoint"):
        train_stage1(fresh_filter(cfg, init), train, st, cfg.stage1, checkpoint=tmp_path / "none.pt", resume=True, **QUIET)
    ckpt = tmp_path / "last.pt"
    train_stage1(fresh_filter(cfg, init), train, st, cfg.stage1, checkpoint=ckpt, meta={"lr": 1e-3}, stop_after=3, **QUIET)
    with pytest.raises(ResumeError, match="other settings"):
        train_stage1(fresh_filter(cfg, init), train, st, cfg.stage1, checkpoint=ckpt, resume=True, meta={"lr": 5e-4},
                     **QUIET)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="not a torch.save file"):
        train_stage1(fresh_filter(cfg, init), train, st, cfg.stage1, checkpoint=tmp_path / "junk.pt", resume=True,
                     **QUIET)


def test_select_best_survives_a_resume(small_world, tmp_path, monkeypatch):
    """The best validation so far comes back from the checkpoint's history: a resumed run replaces
    best.pt only with a better epoch, and the filter it keeps is that epoch's."""
    from cirtutor import pipeline
    from cirtutor.features import init_weights
    from cirtutor.pipeline import run_stage1

    cfg, _, train, val, st, sv = small_world(["data.synthetic_size=4", "stage1.batch_size=10", "stage1.epochs=3",
                                              "stage1.validate_every=1", "stage1.select=best",
                                              "stage1.batch_composition=random"])
    scores = iter([70.0, "kill", 40.0, 50.0, 0.0])    # epoch 0 is the best; the run stops in epoch 1's validation

    def evaluate(*args, **kwargs):
        score = next(scores)
        if score == "kill":
            raise KeyboardInterrupt
        return {"avg": score}
    monkeypatch.setattr(pipeline, "evaluate_filter", evaluate)
    inputs = dict(train=train, val=val, stores={"train": st, "val": sv}, weights=init_weights(cfg, verbose=False),
                  device="cpu")
    out = tmp_path / "seed0" / "stage1"
    with pytest.raises(KeyboardInterrupt):
        run_stage1(cfg, tmp_path, 0, **inputs)
    best_epoch0 = (out / "best.pt").read_bytes()
    assert load_checkpoint(out / "last.pt")["history"]["val"][0]["avg"] == 70.0
    filt, _ = run_stage1(cfg, tmp_path, 0, resume=True, **inputs)
    assert (out / "best.pt").read_bytes() == best_epoch0          # epochs 1 (40) and 2 (50) were worse
    assert all(torch.equal(v, torch.load(out / "best.pt", weights_only=True)[k]) for k, v in filt.state_dict().items())
