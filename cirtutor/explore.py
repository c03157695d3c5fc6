"""Looking at results query by query (notebook 06), and inside CaLa's loss (notebook 08).

All of it reads the `details` an evaluation returns (`evaluate_reranker(..., details=d)`):
the filter's top-K names of every query ("ranked", (N, K)), the re-ranker's scores of them
("scores", (N, K)), the target's place before ("stage1", (N, K) bool) and after re-ranking
("stage2"), and which validation query each row is ("indices").

    edit_types(cfg, dataset)                  the edit kind of every query of a synthetic split
    at_k(details, k)                          the details of a longer evaluation cut to R_k
    recall_by_group(details, groups, k)       R@k of F and of R per group (an edit type, a category)
    query_item / target_gain (analysis)       one row as a figure item; how far re-ranking moved its target
    explorer(dataset, details)                sliders over the queries and K, drawing each one's lists
    logit_breakdown(objective, dataset, store) CaLa's logit matrices on training batches: who wins each row
"""
from __future__ import annotations

from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch

from cirtutor.analysis import query_item, target_gain
from cirtutor.config import Config
from cirtutor.data.base import read_json
from cirtutor.data.registry import dataset_root
from cirtutor.engine.stage1 import first_batches
from cirtutor.errors import CirtutorError
from cirtutor.evaluation.metrics import rerank_labels
from cirtutor.viz import plot_qualitative


def edit_types(cfg: Config, dataset, split: str = "val") -> list[str]:
    """The edit kind ("add", "remove", "recolour", "resize", "move", "shape") of each query of
    `dataset`, a split of tiny mode's synthetic world, from its extras (`synthetic/queries.*.json`).
    The real datasets record no such thing: they raise a CirtutorError."""
    if cfg.data.root is not None:
        raise CirtutorError("edit types exist only in tiny mode's synthetic datasets (data.root is None); "
                            f"this config reads a real dataset at {cfg.data.root}")
    records = read_json(dataset_root(cfg.data, verbose=False) / "synthetic" / f"queries.{split}.json",
                        f"synthetic {split} queries", "Delete the cached synthetic dataset folder to regenerate it.")
    kind = {(r["reference"], r["target"]): r["edit_type"] for r in records}
    try:
        return [kind[(q["reference"], q["target"])] for q in dataset.queries]
    except KeyError as e:
        raise CirtutorError(f"query {e.args[0]} is not in the synthetic {split} split: is `dataset` that split?") from None


def at_k(details: dict, k: int) -> dict:
    """`details` of a longer evaluation cut to R_k: the filter's first k candidates of every query,
    re-ordered by their scores (each candidate is scored alone, so these are R_k's lists)."""
    if k > np.shape(details["stage1"])[1]:
        raise CirtutorError(f"k={k} exceeds the evaluated lists ({np.shape(details['stage1'])[1]} candidates)")
    stage1, scores = np.asarray(details["stage1"], bool)[:, :k], np.asarray(details["scores"])[:, :k]
    return {**details, "stage1": stage1, "stage2": rerank_labels(stage1, scores, k),
            "ranked": np.asarray(details["ranked"])[:, :k], "scores": scores}


def recall_by_group(details: dict, groups: list, k: int = 1) -> dict:
    """R@k of the filter (F) and of the re-ranked lists (R) within each group of queries, in %:
    {group: {"queries": n, "F": ..., "R": ..., "R - F": ...}}, groups in order of first appearance.
    `groups[i]` is the group of validation query i; rows map to queries through details["indices"]."""
    s1, s2 = np.asarray(details["stage1"], bool), np.asarray(details["stage2"], bool)   # (N, K) each
    if k > s1.shape[1]:
        raise CirtutorError(f"R@{k} needs lists of at least {k}; these hold {s1.shape[1]}")
    labels = [groups[i] for i in details["indices"]]
    out = {}
    for g in dict.fromkeys(labels):
        rows = np.array([lab == g for lab in labels])
        f, r = 100 * s1[rows, :k].any(1).mean(), 100 * s2[rows, :k].any(1).mean()
        out[g] = {"queries": int(rows.sum()), "F": float(f), "R": float(r), "R - F": float(r - f)}
    return out


def gain_groups(details: dict) -> dict[str, np.ndarray]:
    """The rows whose target re-ranking moved up, left in place, moved down, or could not reach
    (target outside the list): {"moved up": rows, "unchanged": …, "moved down": …, "not in the list": …}."""
    gain, found = target_gain(details), np.asarray(details["stage1"], bool).any(1)
    return {"moved up": np.flatnonzero((gain > 0) & found), "unchanged": np.flatnonzero((gain == 0) & found),
            "moved down": np.flatnonzero((gain < 0) & found), "not in the list": np.flatnonzero(~found)}


def gain_counts(details: dict) -> Counter:
    """How many rows fall in each of `gain_groups`."""
    return Counter({name: len(rows) for name, rows in gain_groups(details).items()})


def explorer(dataset, details: dict, n: int = 6):
    """An ipywidgets explorer: pick which queries to browse (all, moved up, moved down, unchanged
    at the longest K), slide through them, and slide K, the number of the filter's candidates
    the re-ranker re-orders; each shows the reference and text, the filter's top `n` and the
    re-ranked top `n` of R_K, the target framed (`viz.plot_qualitative`)."""
    import ipywidgets as widgets          # optional: the notebooks' extra (pip install 'cirtutor[notebooks]')

    groups = gain_groups(details)
    subsets = {"all": np.arange(len(details["stage1"])), **{k: groups[k] for k in ("moved up", "moved down", "unchanged")}}
    which = widgets.Dropdown(options=[f"{name} ({len(rows)})" for name, rows in subsets.items()], description="queries")
    pick = widgets.IntSlider(min=0, max=max(len(subsets["all"]) - 1, 0), description="#")
    k_max = np.shape(details["ranked"])[1]
    k = widgets.IntSlider(min=1, max=k_max, value=k_max, description="K")
    out = widgets.Output()
    regrouping = []                        # set while a group change moves the slider: one redraw, not two

    def rows():
        return subsets[which.value.rsplit(" (", 1)[0]]

    def draw(*_):
        if regrouping:
            return
        with out:
            out.clear_output(wait=True)
            if not len(rows()):
                print("no query in this group")
                return
            row = int(rows()[min(pick.value, len(rows()) - 1)])
            plot_qualitative([query_item(dataset, details, row, n, k.value)])
            plt.show()

    def regroup(*_):
        regrouping.append(True)
        pick.value = 0
        pick.max = max(len(rows()) - 1, 0)
        regrouping.clear()
        draw()

    which.observe(regroup, names="value")
    pick.observe(draw, names="value")
    k.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([which, pick, k]), out])


def logit_breakdown(objective, dataset, store, n_batches: int = 8, batch_size: int = 64,
                    composition: str = "reference_groups", seed: int = 0, device="cpu") -> dict[str, dict[str, float]]:
    """Look inside CaLa's loss (notebook 08): on the first `n_batches` training batches that
    `batch_order` makes (generator seeded by `seed`), with the model and modules in eval mode,
    each logit matrix of `CalaObjective.logits` ("S_f", "S_ctr", "S_tbia", "S_mix") ->
    {"top-1": % of rows whose own column wins, "mean |S|": mean absolute logit,
     "margin": mean diagonal minus mean off-diagonal}, averaged over the batches.
    "top-1" of S_f is what evaluation uses; of S_mix, what the authors' loss trains."""
    objective.eval()
    sums: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for _, inputs in first_batches(dataset, store, batch_size, composition, n_batches, seed, device):
            for name, S in objective.logits(*inputs).items():                          # (B, B) each
                S = S.float().cpu()
                own = torch.eye(len(S), dtype=torch.bool)
                row = [(S.argmax(1) == torch.arange(len(S))).float().mean().item() * 100, S.abs().mean().item(),
                       (S[own].mean() - S[~own].mean()).item()]
                sums[name] = sums.get(name, 0) + np.array(row)
    return {name: dict(zip(("top-1", "mean |S|", "margin"), (v / n_batches).tolist())) for name, v in sums.items()}
