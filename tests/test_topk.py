"""Top-K files (docs/data_formats.md, 'Top-K files'): our safetensors + JSON format and the authors' torch.save format."""
import datetime
import json
import zipfile

import numpy as np
import pytest
import torch

from cirtutor.data import RetrievalGroup
from cirtutor.evaluation import EvaluationError, TopK, authors_filename, check_lists, load_topk, read_authors_topk, save_topk, write_authors_topk

GALLERY = [f"dev-{i}-0-img{i % 2}" for i in range(12)]
RANKED = np.array([GALLERY[1:6], GALLERY[6:11], GALLERY[0:5]])   # (3, 5), reference already removed
TARGETS = [GALLERY[3], GALLERY[11], GALLERY[0]]                   # query 1 misses


def fiq_topk():
    return TopK(RANKED, GALLERY, "val", TARGETS, category="dress")


def cirr_topk():
    group = np.eye(3, 5, dtype=bool)
    return TopK(RANKED, GALLERY, "val", TARGETS, group_labels=group)


def same(a: TopK, b: TopK) -> bool:
    arrays = ("sorted_index_names", "labels", "group_labels", "subset_names")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) if getattr(a, f) is not None else getattr(b, f) is None
               for f in arrays) and (a.index_names, a.target_names, a.split, a.category) == \
        (b.index_names, b.target_names, b.split, b.category)


def test_labels_come_from_the_targets():
    topk = fiq_topk()
    assert (topk.n, topk.k) == (3, 5)
    assert topk.labels.tolist() == [[0, 0, 1, 0, 0], [0] * 5, [1, 0, 0, 0, 0]]
    with pytest.raises(EvaluationError, match="disagree"):
        TopK(RANKED, GALLERY, "val", TARGETS, labels=np.zeros((3, 5), bool))


@pytest.mark.parametrize("make", [fiq_topk, cirr_topk, lambda: TopK(RANKED, GALLERY, "test1")])
def test_our_format_round_trip(tmp_path, make):
    topk = make()
    path = save_topk(tmp_path / "top.safetensors", topk)
    assert json.loads((tmp_path / "top.json").read_text())["shape"] == [3, 5]
    assert same(load_topk(path), topk)


def test_our_format_detects_a_mismatched_pair(tmp_path):
    save_topk(tmp_path / "top.safetensors", fiq_topk())
    sidecar = (tmp_path / "top.json").read_text()
    save_topk(tmp_path / "top.safetensors", cirr_topk())
    (tmp_path / "top.json").write_text(sidecar)
    with pytest.raises(EvaluationError, match="sha256"):
        load_topk(tmp_path / "top.safetensors")
    with pytest.raises(EvaluationError, match=".safetensors"):
        save_topk(tmp_path / "top.pt", fiq_topk())
    with pytest.raises(EvaluationError, match="not in index_names"):
        save_topk(tmp_path / "top.safetensors", TopK(RANKED, GALLERY[:5], "val"))


def test_select_truncates_and_checks_like_the_authors_loader(tmp_path):
    path = save_topk(tmp_path / "top.safetensors", fiq_topk())
    top3 = load_topk(path, k=3, split="val", category="dress", index_names=GALLERY, target_names=TARGETS)
    assert top3.sorted_index_names.tolist() == RANKED[:, :3].tolist() and top3.labels.shape == (3, 3)
    for kwargs, message in [(dict(k=6), "only the top 5"), (dict(split="test1"), "split"),
                            (dict(category="shirt"), "category"), (dict(index_names=GALLERY[::-1]), "gallery"),
                            (dict(target_names=TARGETS[::-1]), "targets")]:
        with pytest.raises(EvaluationError, match=message):
            load_topk(path, **kwargs)


class Split:
    """The little a list check asks of a dataset: its split, queries and retrieval groups (CIRR-like)."""
    dataset_name, split = "CIRR", "val"
    queries = [{"target": t} for t in TARGETS]

    def retrieval_groups(self):
        return [RetrievalGroup(None, GALLERY, [0, 1, 2], remove_reference=True, subsets=True)]


def test_subset_order_round_trips_and_gives_the_subset_labels(tmp_path):
    subsets = np.array([GALLERY[3:8], GALLERY[1:6], GALLERY[0:5]])          # (3, 5) in the filter's order
    topk = TopK(RANKED, GALLERY, "val", TARGETS, subset_names=subsets)
    assert topk.group_labels.tolist() == [[1, 0, 0, 0, 0], [0] * 5, [1, 0, 0, 0, 0]]
    back = load_topk(save_topk(tmp_path / "top.safetensors", topk))
    assert back.subset_names.tolist() == subsets.tolist() and same(back, topk)


@pytest.mark.parametrize("change, words", [
    (dict(split="test1"), ("split 'test1'",)),
    (dict(sorted_index_names=RANKED[:, :2]), ("top 2", "--k 4")),
    (dict(index_names=GALLERY[::-1]), ("gallery",)),
    (dict(target_names=TARGETS[::-1]), ("targets",)),
    (dict(target_names=None), ("no targets",)),
    (dict(group_labels=None), ("subset labels",)),
    (dict(category="dress"), ("one top-K list per retrieval group",)),
])
def test_stage_2_refuses_lists_that_are_not_the_splits(tmp_path, change, words):
    """The authors' stage-2 loader checks split, K, names and targets; so does `check_lists`, in one line."""
    good = TopK(RANKED, GALLERY, "val", TARGETS, group_labels=np.eye(3, 5, dtype=bool))
    assert check_lists([good], Split(), 4) == [good]
    fields = dict(sorted_index_names=good.sorted_index_names, index_names=GALLERY, split="val",
                  target_names=TARGETS, group_labels=good.group_labels) | change
    path = save_topk(tmp_path / "top.safetensors", TopK(**fields))        # written and read as a run's file is
    with pytest.raises(EvaluationError) as e:
        check_lists([load_topk(path)], Split(), 4)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    with pytest.raises(EvaluationError, match="rows"):
        check_lists([TopK(RANKED[:2], GALLERY, "val", TARGETS[:2], group_labels=np.eye(2, 5, dtype=bool))], Split(), 4)


# ----------------------------------------------------------------------------- the authors' format

def save_like_the_authors(path, full_labels=True):
    """A CIRR val file exactly as §9.3 describes: torch.save of numpy <U.. names, lists, and
    bool label views into the N×gallery matrix."""
    everything = torch.zeros(3, len(GALLERY), dtype=torch.bool)  # N × (gallery − 1) in the original
    everything[:, :5] = torch.from_numpy(fiq_topk().labels)
    torch.save({"sorted_index_names": np.array(RANKED), "target_names": TARGETS, "index_names": GALLERY,
                "labels": everything[:, :5] if full_labels else everything[:, :5].clone(), "split": "val",
                "group_labels": torch.from_numpy(np.eye(3, 5, dtype=bool))}, path)


def as_numpy1_pickle(src, dst):
    """Rewrite a file's pickle as numpy 1.x writes it (numpy.core instead of numpy._core), as in the released files."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, data)


def test_authors_files_load_without_trust(tmp_path):
    save_like_the_authors(tmp_path / "new.pt")
    as_numpy1_pickle(tmp_path / "new.pt", tmp_path / "old.pt")
    for name in ("new.pt", "old.pt"):
        topk = read_authors_topk(tmp_path / name, index_names=GALLERY)
        assert same(topk, cirr_topk())
        assert topk.labels.base is None                                   # a copy: the N×gallery storage is dropped


def test_write_authors_topk_matches_the_described_layout(tmp_path):
    path = write_authors_topk(tmp_path / authors_filename(5, "val", "dress"), fiq_topk())
    assert path.name == "fiq_top_5_val_dress.pt"
    raw = torch.load(path, weights_only=False)  # our own file, written just above: inspect its raw layout
    assert list(raw) == ["sorted_index_names", "target_names", "index_names", "labels", "split", "dress_types"]
    assert raw["sorted_index_names"].dtype == np.dtype("<U13") and raw["sorted_index_names"].shape == (3, 5)
    assert raw["labels"].dtype == torch.bool and raw["dress_types"] == "dress"
    assert same(read_authors_topk(path, k=5, category="dress"), fiq_topk())

    test1 = TopK(RANKED, GALLERY, "test1")
    path = write_authors_topk(tmp_path / authors_filename(5, "test1"), test1)
    assert list(torch.load(path, weights_only=False)) == ["sorted_index_names", "index_names", "split"]  # written above
    assert same(read_authors_topk(path, split="test1"), test1)
    cirr = write_authors_topk(tmp_path / "cirr.pt", cirr_topk())
    assert "group_labels" in torch.load(cirr, weights_only=False)  # written above


def test_other_pickled_objects_need_trust(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"sorted_index_names": np.array(RANKED), "index_names": GALLERY, "split": "test1",
                "written": datetime.date(2023, 5, 1)}, path)
    with pytest.raises(EvaluationError, match="trust=True"):
        read_authors_topk(path)
    assert read_authors_topk(path, trust=True).k == 5


def test_authors_reader_rejects_other_files(tmp_path):
    torch.save({"labels": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    with pytest.raises(EvaluationError, match="not a top-K file"):
        read_authors_topk(tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError):
        read_authors_topk(tmp_path / "junk.pt")
    with pytest.raises(EvaluationError, match="missing"):
        read_authors_topk(tmp_path / "absent.pt")
