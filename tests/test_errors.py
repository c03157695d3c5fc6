"""The bad-input contract: every ordinary mistake gives one line on stderr naming what was wrong,
exit code 2, no traceback, and writes nothing; and the cases that used to go silently wrong."""
import io
import json

import pytest

from cirtutor.cli import main
from cirtutor.errors import DataError

TINY = ["--set", "data.synthetic_size=8", "--set", "stage1.batch_size=4", "--set", "stage1.epochs=1"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """An empty working folder holding one plain file (`afile`), with its own cache."""
    monkeypatch.setenv("CIRTUTOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(place, capsys, argv, *words):
    """Run `cirtutor argv`: exit 2, one line on stderr holding every word, nothing written."""
    before = files(place)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert files(place) == before
    return err


SETTINGS = [  # (--set, words the message holds)
    ("stage1.schedule=linear", ("stage1.schedule", "epoch, step")),
    ("stage1.batch_size=0", ("stage1.batch_size=0", "at least 1")),
    ("stage1.lr=nan", ("stage1.lr=nan", "finite")),
    ("stage2.eval_ks=abc", ("stage2.eval_ks=abc", "positive integers")),
    ("model.vision_heads=7", ("model.vision_heads=7", "model.vision_width")),
    ("stage1.epochs=0", ("stage1.epochs=0", "at least 1")),
    ("stage1.epochs=-3", ("stage1.epochs=-3",)),
    ("data.dataset=cirrr", ("data.dataset='cirrr'", "cirr, fashioniq")),
    ("ablations=no_text,nope", ("unknown ablation 'nope'",)),
    ("device=gpu", ("device='gpu'",)),
]


@pytest.mark.parametrize("setting, words", SETTINGS, ids=[s for s, _ in SETTINGS])
def test_a_bad_setting_is_refused_before_any_work(place, capsys, setting, words):
    refused(place, capsys, ["train-stage1", "--run-dir", "run", "--set", setting], *words)


def test_a_bad_model_setting_is_refused_by_model_info(place, capsys):
    refused(place, capsys, ["model-info", "--preset", "tiny", "--set", "model.vision_heads=7"], "model.vision_heads=7")


def test_an_unknown_ablation_is_named_as_such(place, capsys):
    err = refused(place, capsys, ["evaluate", "--run-dir", "run", "--ablation", "nope"], "unknown ablation 'nope'")
    assert "no trained" not in err


def test_make_data_size_zero(place, capsys):
    refused(place, capsys, ["make-data", "--out", "data", "--size", "0"], "--size", "at least 2")


def test_make_data_into_a_file(place, capsys):
    refused(place, capsys, ["make-data", "--out", "afile", "--size", "4"], "afile", "is a file")


def test_make_data_refusal_names_the_flag(place, capsys):
    assert main(["make-data", "--out", "data", "--size", "2", "--resolution", "16"]) == 0
    capsys.readouterr()
    err = refused(place, capsys, ["make-data", "--out", "data", "--size", "3", "--resolution", "16"], "--overwrite")
    assert "overwrite=True" not in err


@pytest.mark.parametrize("command", ["train-stage1", "train-stage2", "evaluate", "reproduce"])
def test_run_dir_that_is_a_file(place, capsys, command):
    refused(place, capsys, [command, "--run-dir", "afile"], "afile", "is a file")


def test_download_url_that_is_no_url(place, capsys):
    refused(place, capsys, ["download", "blip", "--url", "notaurl", "--out", "models"], "notaurl", "not a download URL")


def test_download_out_that_is_a_file(place, capsys):
    refused(place, capsys, ["download", "blip", "--out", "afile"], "--out afile", "is a file")


def test_analyze_out_that_is_a_file(place, capsys):
    import numpy as np
    np.save(place / "a.npy", np.eye(3, 5, dtype=bool))
    refused(place, capsys, ["analyze", "--stage1", "a.npy", "--stage2", "a.npy", "--out", "afile"], "--out afile")


def test_train_stage2_without_a_filter_writes_nothing(place, capsys):
    refused(place, capsys, ["train-stage2", "--run-dir", "run", *TINY], "no trained filter")


def test_resume_and_overwrite_together(place, capsys):
    refused(place, capsys, ["train-stage1", "--run-dir", "run", "--resume", "--overwrite"], "--resume", "--overwrite")


def test_presets_are_valid():
    from cirtutor.config import PRESETS, validate
    for cfg in PRESETS.values():
        validate(cfg)


def test_the_variants_are_defined_once_in_the_config():
    import cirtutor.config
    import cirtutor.pipeline
    assert cirtutor.pipeline.ABLATIONS is cirtutor.config.ABLATIONS
    assert set(cirtutor.config.TINY_ABLATIONS) <= set(cirtutor.config.ABLATIONS)


def test_a_batch_larger_than_the_training_set_trains_nothing(place, capsys):
    """An epoch without one full batch made no step: refused, and no filter is saved as trained."""
    assert main(["train-stage1", "--run-dir", "run", "--set", "data.synthetic_size=4",
                 "--set", "stage1.batch_size=64", "--set", "stage1.batch_composition=random"]) == 2
    err = capsys.readouterr().err
    assert "smaller than a batch" in err and "Traceback" not in err
    assert not (place / "run" / "seed0" / "stage1" / "filter.pt").exists()


# ----------------------------------------------------------------------------- a run folder keeps its settings

def test_a_run_folder_refuses_other_settings_and_keeps_its_record(place, capsys):
    run = ["--run-dir", "run", *TINY]
    assert main(["train-stage1", *run]) == 0
    record = (place / "run" / "config.json").read_text()
    capsys.readouterr()
    err = refused(place, capsys, ["train-stage1", *run, "--set", "stage1.lr=1e-3"], "stage1.lr", "--run-dir", "--overwrite")
    assert "0.001" in err
    refused(place, capsys, ["train-stage1", "--preset", "tiny_fashioniq", *run], "name", "data.dataset")
    refused(place, capsys, ["extract-topk", *run, "--set", "stage2.k=5"], "stage2.k", "train-stage1 --overwrite")
    assert main(["evaluate", *run]) == 2                         # fails before work: the record stays as it was
    assert (place / "run" / "config.json").read_text() == record
    capsys.readouterr()
    assert main(["train-stage1", *run, "--set", "stage2.fast_eval=false", "--set", "device=cpu"]) == 0  # speed, device
    assert "found trained filter" in capsys.readouterr().out
    assert main(["train-stage1", *run, "--set", "stage1.lr=1e-3", "--overwrite"]) == 0
    assert "found trained filter" not in capsys.readouterr().out
    assert '"lr": 0.001' in (place / "run" / "config.json").read_text()


# ----------------------------------------------------------------------------- annotations

def edit_entry(path, index, **fields):
    entries = json.loads(path.read_text())
    entries[index].update(fields)
    path.write_text(json.dumps(entries))


def loader_error(make) -> str:
    with pytest.raises(DataError) as e:
        make()
    return str(e.value)


def test_a_null_caption_gets_one_message_from_data_stats_and_the_loader(cirr_root, capsys):
    from cirtutor.data.cirr import CIRR
    edit_entry(cirr_root / "cirr" / "captions" / "cap.rc2.val.json", 1, caption=None)
    assert main(["data-stats", "--dataset", "cirr", "--annotations", str(cirr_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and '"caption": null' in err and "entry 1" in err
    assert err.endswith(loader_error(lambda: CIRR(cirr_root, "val")))


def test_a_null_fashioniq_caption_is_caught(fiq_root, capsys):
    from cirtutor.data.fashioniq import FashionIQ
    edit_entry(fiq_root / "captions" / "cap.dress.train.json", 0, captions=[None, "shorter"])
    assert main(["data-stats", "--dataset", "fashioniq", "--annotations", str(fiq_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and '"captions": [null, "shorter"]' in err
    assert err.endswith(loader_error(lambda: FashionIQ(fiq_root, "train", "dress")))


def test_a_validation_target_outside_the_split_is_an_error(cirr_root):
    from cirtutor.data.base import check_targets
    from cirtutor.data.cirr import CIRR
    from cirtutor.engine.stage1 import evaluate_filter
    edit_entry(cirr_root / "cirr" / "captions" / "cap.rc2.val.json", 0, target_hard="dev-999-0-img0")
    val = CIRR(cirr_root, "val", load_images=False)
    assert "dev-999-0-img0" in loader_error(lambda: check_targets(val))
    assert "never find their target" in loader_error(lambda: evaluate_filter(None, val, None))  # before any model work


def test_a_query_whose_target_is_its_reference_is_flagged(cirr_root, capsys):
    from cirtutor.data.base import check_targets
    from cirtutor.data.cirr import CIRR
    edit_entry(cirr_root / "cirr" / "captions" / "cap.rc2.val.json", 0, target_hard="dev-0-0-img0")
    assert main(["data-stats", "--dataset", "cirr", "--annotations", str(cirr_root)]) == 1
    assert "SELF-TARGET val: 1 query(ies)" in capsys.readouterr().out
    assert "its own reference" in loader_error(lambda: check_targets(CIRR(cirr_root, "val", load_images=False)))


def test_data_stats_fails_without_the_validation_split(cirr_root, capsys):
    for path in (cirr_root / "cirr").rglob("*.val.json"):
        path.unlink()
    assert main(["data-stats", "--dataset", "cirr", "--annotations", str(cirr_root)]) == 1
    out = capsys.readouterr().out
    assert "MISSING val: no captions and no image list" in out and not out.strip().endswith("OK")


# ----------------------------------------------------------------------------- analyze

@pytest.fixture
def label_files(place):
    """An authors'-format top-K file (stage 1), its stage-II label array saved with torch.save, and bad arrays."""
    import numpy as np
    import torch

    from cirtutor.evaluation.topk import TopK, write_authors_topk
    rng = np.random.default_rng(0)
    gallery = [f"img{i}" for i in range(30)]
    ranked = np.array([rng.permutation(gallery)[:10] for _ in range(12)])
    targets = [r[i % 10] if i % 4 else "elsewhere" for i, r in enumerate(ranked)]
    topk = TopK(ranked, gallery, split="val", target_names=targets)
    write_authors_topk(place / "topk.pt", topk)
    torch.save(torch.from_numpy(np.ascontiguousarray(topk.labels[:, ::-1])), place / "stage2.pt")
    np.save(place / "flat.npy", np.ones(5, dtype=bool))
    np.save(place / "scalar.npy", np.array(True))
    first = np.zeros((4, 6), dtype=bool)
    first[:, 0] = True
    np.save(place / "first.npy", first)
    (place / "empty.npy").write_bytes(b"")
    return place


@pytest.mark.parametrize("argv, words", [
    (["--stage1", "flat.npy", "--stage2", "flat.npy"], ("flat.npy", "shape (5,)", "(N, K)")),
    (["--stage2", "scalar.npy"], ("scalar.npy", "shape ()")),
    (["--stage2", "empty.npy"], ("empty.npy", "not a readable .npy")),
], ids=["1-D", "scalar", "zero-byte"])
def test_analyze_refuses_arrays_that_are_no_labels(label_files, capsys, argv, words):
    refused(label_files, capsys, ["analyze", *argv], *words)


def test_analyze_with_every_target_already_first(label_files, capsys):
    assert main(["analyze", "--stage1", "first.npy", "--stage2", "first.npy"]) == 0
    assert "decrease n/a (every target is already first)" in capsys.readouterr().out


def test_analyze_reads_the_authors_files_without_trust(label_files, capsys):
    assert main(["analyze", "--stage2", "stage2.pt"]) == 0
    out = capsys.readouterr().out
    assert "R@1" in out and "R@10" in out and "re-ranked: mean 0-based target rank" in out and "9/12" in out
    assert main(["analyze", "--stage1", "topk.pt"]) == 0
    assert "initial: mean 0-based target rank" in capsys.readouterr().out
    assert main(["analyze", "--stage1", "topk.pt", "--stage2", "stage2.pt"]) == 0
    out = capsys.readouterr().out
    assert "Table 7 (0-based target rank within the top-10; 9/12 queries have it)" in out and "--trust" not in out


def test_torch_messages_lose_their_terminal_codes(place):
    import torch

    from cirtutor.errors import CirtutorError
    from cirtutor.io import plain_text, torch_load
    assert plain_text("\x1b[1mWeights only load failed.\x1b[0m") == "Weights only load failed."
    torch.save({"object": DataError("a pickled class")}, place / "object.pt")
    with pytest.raises(CirtutorError) as e:
        torch_load(place / "object.pt")
    assert "\x1b" not in str(e.value) and "--trust" in str(e.value)


# ----------------------------------------------------------------------------- the submission validator

SUBMISSION_GALLERY = [f"test1-{i}-0-img0" for i in range(60)]
SUBMISSION_QUERIES = [{"pairid": 7, "reference": SUBMISSION_GALLERY[0], "subset": SUBMISSION_GALLERY[1:6]}]


@pytest.fixture
def recall_file(tmp_path):
    from cirtutor.evaluation import write_cirr_submission
    ranked = [[n for n in SUBMISSION_GALLERY[1:]][:50]]
    return write_cirr_submission(tmp_path, "demo", [7], ranked, [SUBMISSION_GALLERY[1:4]])["recall"]


def check(path, text=None):
    from cirtutor.evaluation import validate_cirr_submission
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text, encoding="utf-8")
    problems = validate_cirr_submission(path, SUBMISSION_QUERIES, SUBMISSION_GALLERY)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    return problems


def test_names_outside_the_test1_gallery_are_problems(recall_file):
    assert check(recall_file) == []
    obj = json.loads(recall_file.read_text())
    obj["7"][3], obj["7"][4] = "dev-0-0-img0", "test1-typo-img0"
    problems = check(recall_file, json.dumps(obj))
    assert problems == ["1 entries name images that are not in the test1 gallery (e.g. pairids 7)"]


@pytest.mark.parametrize("text", [
    '{"version": "rc2", "metric": ["recall"], "7": []}',
    '{"version": "rc2", "metric": {"a": 1}, "7": []}',
    '{"version": ["rc2"], "metric": "recall", "\u00b2": [], "\u0661\u0662": ["x"]}',
    "[" * 100000 + "]" * 100000,
    '{"version": "rc2", "metric": "recall", "7": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"version": "rc2", "metric": "recall", "7": [1, null, {"a": []}], "8": NaN}',
    "null", '"text"', "", b'{"version": "rc2\xff"}',
], ids=["metric-list", "metric-dict", "non-ascii-digits", "deep-nesting", "deep-entry", "odd-values", "null",
        "string", "empty", "not-utf8"])
def test_the_validator_never_raises(recall_file, text):
    assert check(recall_file, text)


# ----------------------------------------------------------------------------- downloads

class Answer:
    """A response of the monkeypatched opener: `body` with the given headers (no network)."""

    def __init__(self, body: bytes, headers: dict):
        self.status, self.headers, self._body = 200, headers, io.BytesIO(body)

    def read(self, n=-1):
        return self._body.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def opener(monkeypatch):
    """cirtutor.download's urlopen answering every URL with opener.body and opener.headers."""
    from cirtutor import download as dl
    state = type("Opener", (), {"body": b"x" * 5000, "headers": {}})()
    monkeypatch.setattr(dl, "urlopen", lambda request, timeout: Answer(state.body, state.headers))
    return state


def test_a_download_of_unknown_length_never_takes_the_final_name(opener, tmp_path):
    """A body cut short without Content-Length looks complete: without a checksum it is refused."""
    from cirtutor.download import DownloadError, download_file
    with pytest.raises(DownloadError, match="no Content-Length.*--sha256"):
        download_file("https://example.org/model.pth", tmp_path / "model.pth", progress=False)
    assert not (tmp_path / "model.pth").exists() and (tmp_path / "model.pth.part").stat().st_size == 5000


def test_a_download_of_unknown_length_is_kept_when_its_checksum_holds(opener, tmp_path, capsys):
    import hashlib

    from cirtutor.download import download_file
    digest = hashlib.sha256(opener.body).hexdigest()
    download_file("https://example.org/model.pth", tmp_path / "model.pth", sha256=digest, progress=False)
    assert (tmp_path / "model.pth").read_bytes() == opener.body
    assert f"sha256 {digest}" in capsys.readouterr().out


def test_every_download_prints_its_sha256_and_how_to_pin_it(opener, place, capsys):
    import hashlib
    opener.headers = {"Content-Length": str(len(opener.body))}
    assert main(["download", "blip", "--url", "https://example.org/model_base.pth", "--out", "models",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(opener.body).hexdigest()}" in out and "--sha256" in out


def test_the_cli_refuses_a_download_of_unknown_length(opener, place, capsys):
    assert main(["download", "blip", "--url", "https://example.org/model_base.pth", "--out", "models",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no Content-Length" in err
    assert not (place / "models" / "model_base.pth").exists()


# ----------------------------------------------------------------------------- feature caches

def test_the_feature_cache_notices_a_changed_image(place):
    """The image-feature cache is keyed by the files (name, size, modification time), not the data path."""
    import os

    import torch
    from PIL import Image

    from cirtutor.config import apply_overrides, get_preset
    from cirtutor.data.registry import open_dataset
    from cirtutor.features import feature_store, init_weights

    cfg = apply_overrides(get_preset("tiny"), ["data.synthetic_size=2"])
    weights = init_weights(cfg, verbose=False)
    before = feature_store(cfg, "val", weights, "cpu")
    assert len(list((place / "cache" / "features").glob("*.safetensors"))) == 1
    assert torch.equal(feature_store(cfg, "val", weights, "cpu")[[before.names[0]]], before[[before.names[0]]])
    images = open_dataset(cfg.data, "val", "gallery")
    path = images.image_path(images.gallery[0])
    stat = path.stat()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(path)                 # another picture under the same name
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = feature_store(cfg, "val", weights, "cpu")
    assert len(list((place / "cache" / "features").glob("*.safetensors"))) == 2
    name = images.gallery[0]
    assert not torch.equal(after[[name]], before[[name]])


def test_submit_checks_for_its_models_before_any_data_or_features(place, capsys):
    refused(place, capsys, ["submit", "--run-dir", "run"], "no trained filter")


def test_a_missing_variant_names_its_ablation(place, capsys):
    (place / "run" / "seed0" / "stage1").mkdir(parents=True)
    (place / "run" / "seed0" / "stage1" / "filter.pt").write_bytes(b"")
    refused(place, capsys, ["evaluate", "--run-dir", "run", "--ablation", "no_zt"], "train-stage2", "--ablation no_zt")


def test_cirr_images_under_img_raw_are_found(cirr_root):
    """CIRR's README keeps train/, dev/ and test1/ under img_raw/: the loader looks there too."""
    from cirtutor.data.cirr import CIRR
    (cirr_root / "img_raw").mkdir()
    for folder in ("train", "dev", "test1"):
        (cirr_root / folder).rename(cirr_root / "img_raw" / folder)
    val = CIRR(cirr_root, "val")
    assert val.images_root == cirr_root / "img_raw" and val.image_path(val.gallery[0]).is_file()
    assert val.load(val.gallery[0]).shape[0] == 3


def test_a_missing_image_says_which_setting_points_at_the_images(cirr_root):
    from cirtutor.data.cirr import CIRR
    val = CIRR(cirr_root, "val", images=cirr_root / "elsewhere")
    assert "--set data.images=DIR" in loader_error(lambda: val.load(val.gallery[0]))


def test_a_reranker_with_another_vit_is_refused(cirr_root):
    """Both stages read one feature store, made with the filter's frozen ViT: another ViT is an error."""
    import torch

    from cirtutor.config import get_model_config
    from cirtutor.data.cirr import CIRR
    from cirtutor.engine.stage2 import check_same_vision, evaluate_reranker
    from cirtutor.errors import CirtutorError
    from cirtutor.models import CandidateFilter, DualEncoderReranker
    torch.manual_seed(0)
    cfg = get_model_config("tiny")
    filt, model = CandidateFilter(cfg), DualEncoderReranker(cfg)
    with pytest.raises(CirtutorError, match="frozen ViT differs from the filter's"):
        evaluate_reranker(filt, model, CIRR(cirr_root, "val", load_images=False), None, [], ks=(5,))
    model.visual_encoder.load_state_dict(filt.visual_encoder.state_dict())
    check_same_vision(filt, model)


@pytest.mark.parametrize("argv, words", [(["--out", "afile"], ("--out afile", "is a file")),
                                         (["--out", "m", "--steps", "0"], ("--steps 0",)),
                                         (["--out", "m", "--lr", "nan"], ("--lr nan",))], ids=["out-file", "steps", "lr"])
def test_pretrain_tiny_refuses_bad_input_before_pretraining(place, capsys, argv, words):
    refused(place, capsys, ["pretrain-tiny", *argv], *words)


@pytest.mark.parametrize("argv, words", [
    (["train-stage1", "--run-dir", "run", "--subsample", "train=0"], ("--subsample train=0",)),
    (["train-stage1", "--run-dir", "run", "--seed", "-1"], ("--seed -1",)),
    (["extract-topk", "--run-dir", "run", "--k", "0"], ("--k 0",)),
    (["reproduce", "--run-dir", "run", "--seeds", "0"], ("--seeds 0",)),
], ids=["subsample", "seed", "k", "seeds"])
def test_bad_command_options(place, capsys, argv, words):
    refused(place, capsys, argv, *words)
