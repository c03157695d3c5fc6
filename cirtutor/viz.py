"""Figures for the notebooks: the two-stage pipeline schematic and query/candidate grids.

Everything here only draws; it takes datasets and names from the package and returns the
matplotlib Figure so notebooks (and tests) can keep or inspect it.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from PIL import Image

from cirtutor import findings
from cirtutor.data.preprocess import BLIP_MEAN, BLIP_STD, ImageTransform, load_image, target_pad

TARGET_COLOR = "#2ca02c"


def _box(ax, x, y, w, h, text, color):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=color, ec="black", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9, wrap=True)


def _arrow(ax, start, end):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.2, color="black"))


def plot_two_stage_overview(k: int = 50):
    """Schematic of the method (paper Fig. 1/2 analogue): filter the gallery, re-rank the top-K."""
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.set(xlim=(0, 11), ylim=(0, 3.6))
    ax.axis("off")
    _box(ax, 0.1, 2.2, 1.8, 1.1, "reference image\n+\nmodification text", "#f2f2f2")
    _box(ax, 0.1, 0.3, 1.8, 1.1, "gallery\n(N images,\nembedded once)", "#f2f2f2")
    _box(ax, 2.6, 1.6, 2.6, 1.9, "Stage 1: candidate filter\ntext encoder fuses text with\nthe reference image ([ENC])\n"
                                "→ query embedding;\ncosine similarity vs gallery", "#cfe2f3")
    _box(ax, 5.9, 1.9, 1.5, 1.3, f"top-{k}\ncandidates", "#fff2cc")
    _box(ax, 8.0, 1.6, 2.9, 1.9, "Stage 2: dual-encoder re-ranker\nEncoder-t (text) + Encoder-z_t (z_t)\n"
                                "cross-attend each candidate's\nimage tokens → one score", "#d9ead3")
    _box(ax, 8.3, 0.2, 2.3, 0.9, "re-ranked list\n(best first)", "#f2f2f2")
    _arrow(ax, (1.9, 2.75), (2.6, 2.6))
    _arrow(ax, (1.9, 0.85), (2.6, 1.8))
    _arrow(ax, (5.2, 2.55), (5.9, 2.55))
    _arrow(ax, (7.4, 2.55), (8.0, 2.55))
    _arrow(ax, (9.45, 1.6), (9.45, 1.1))
    ax.add_patch(FancyArrowPatch((5.2, 1.75), (8.0, 1.75), arrowstyle="-|>", mutation_scale=14, lw=1.2, ls="--"))
    ax.text(6.6, 1.2, "z_t: the filter's whole output\nsequence, reused by stage 2", ha="center", fontsize=8, style="italic")
    ax.text(3.9, 1.2, "cheap: one vector per image,\nscales to the whole gallery", ha="center", fontsize=8, style="italic")
    ax.set_title("Two-stage composed image retrieval: filter the gallery, then re-rank a short list")
    fig.tight_layout()
    return fig


def _show(ax, ds, name: str, title: str, framed: bool = False):
    ax.imshow(load_image(ds.image_path(name)).convert("RGB"))
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=CAPTION)
    if framed:
        h, w = ax.get_images()[0].get_array().shape[:2]
        ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, ec=TARGET_COLOR, lw=4))


def show_queries(ds, indices: Sequence[int], width: int = 60):
    """One row per query: the reference, then the candidates a query is judged against.

    CIRR-style data shows the 5 subset members (the hard negatives of Recall_subset) with the
    target framed in green; Fashion-IQ-style data shows reference and target.
    """
    rows = [ds.queries[i] for i in indices]
    n_cols = 1 + max(len(q.get("subset", [])) or 1 for q in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.7 * n_cols, 2.1 * len(rows)), squeeze=False)
    for r, (i, q) in enumerate(zip(indices, rows)):
        _show(axes[r, 0], ds, q["reference"], "reference")
        candidates = q.get("subset") or [q.get("target")]
        for c, name in enumerate(candidates, start=1):
            is_target = name == q.get("target")
            _show(axes[r, c], ds, name, "target" if is_target else "candidate", framed=is_target)
        for c in range(len(candidates) + 1, n_cols):
            axes[r, c].axis("off")
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(ds.query_text(i), 22)), fontsize=8, rotation=0,
                              ha="right", va="center", labelpad=10)
    fig.suptitle("Queries: reference + text → target (framed)", fontsize=10)
    fig.tight_layout()
    return fig


def to_display(x: torch.Tensor) -> np.ndarray:
    """Undo the BLIP normalisation of a (3, H, W) tensor -> (H, W, 3) array in [0, 1]."""
    mean, std = torch.tensor(BLIP_MEAN).view(3, 1, 1), torch.tensor(BLIP_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def show_preprocessing(img: Image.Image, resolution: int = 64):
    """The preprocessing pipeline (docs/data_formats.md, 'Image preprocessing') step by step: original, after TargetPad(1.25), model input."""
    padded, x = target_pad(img), ImageTransform(resolution)(img)
    panels = [(img.convert("RGB"), f"original {img.width}×{img.height}"),
              (padded.convert("RGB"), f"TargetPad(1.25) {padded.width}×{padded.height}"),
              (to_display(x), f"model input {tuple(x.shape)}")]
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.6))
    for ax, (im, title) in zip(axes, panels):
        ax.imshow(im)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- report figures
# Drawn by cirtutor.report.write_report from the pipeline's `results` dict; each returns a Figure.

def _k_of(key) -> int:
    """'K=20', '20' or 20 -> 20 (the results dict keys R_K by 'K=…' and timings by str(K))."""
    return int(str(key).split("=")[-1])


def plot_coverage_vs_k(coverage: dict):
    """GT coverage of the stage-1 top-K vs K (docs/metrics.md, 'Ground-truth coverage'): the ceiling on any re-ranker's R@K′ ≥ K,
    which is why R_K's R@50 drops below F's when K < 50 (paper Table 6 note)."""
    ks = sorted(coverage, key=_k_of)
    x, y = [_k_of(k) for k in ks], [coverage[k] for k in ks]  # (n,), (n,)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(x, y, "o-", color="C0")
    for xi, yi in zip(x, y):
        ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xticks(x, [str(k) for k in x])
    ax.minorticks_off()
    ax.set(xlabel="K (size of the stage-1 candidate list, log scale)", ylabel="queries with the target in top-K (%)",
           ylim=(0, 105), title="Ground-truth coverage of the filter's top-K")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_recall_vs_k(filter_metrics: dict, rerank_by_k: dict, metric_keys: Sequence[str]):
    """Each recall metric of R_K vs K as a line, F's value as a dashed line of the same colour
    (paper Tables 5/6 drawn as a figure). `rerank_by_k` maps 'K=…' (or K) to a flat metrics dict."""
    ks = sorted(rerank_by_k, key=_k_of)
    x = [_k_of(k) for k in ks]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, key in enumerate(metric_keys):
        ax.plot(x, [rerank_by_k[k][key] for k in ks], "o-", color=f"C{i}", label=f"{key} (R_K)")
        ax.axhline(filter_metrics[key], color=f"C{i}", ls="--", lw=1, alpha=0.8)
    ax.plot([], [], "k--", lw=1, label="F (stage 1), same colour")
    ax.set(xlabel="K (candidates re-ranked)", ylabel="recall (%)", title="Recall of the re-ranker R_K vs K; F dashed")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def plot_time_vs_k(timing: dict):
    """Per-query inference time vs K (paper Fig. 7): R_K as a line, F as a horizontal line; the
    fixed overheads (model loading, gallery features, z_t) are not per query and go in the title."""
    per_k = timing["per_query_s"]
    ks = sorted(per_k, key=_k_of)
    x = [_k_of(k) for k in ks]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(x, [per_k[k] for k in ks], "o-", color="C1", label="R_K (two-stage: filter, then re-rank top-K)")
    if timing.get("filter_per_query_s") is not None:
        ax.axhline(timing["filter_per_query_s"], color="C0", ls="--", label="F (filter only)")
    fixed = ", ".join(f"{name} {s:.1f} s" for name, s in timing.get("fixed_s", {}).items())
    ax.set(xlabel="K (candidates re-ranked)", ylabel="time per query (s)", ylim=(0, None),
           title="Inference time per query vs K" + (f"\nfixed, once per run: {fixed}" if fixed else ""))
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_rank_shift(shift: dict):
    """Paper Fig. 8: top, the mean shift Δ_i = i − mean(re-ranked index) of the queries first
    ranked at 0-based index i, drawn at x = i + 1 (up = moved toward the top); bottom, how many
    queries had their target at each initial index, on a symlog axis."""
    x = np.asarray(shift["initial"]) + 1                              # (K,)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.bar(x, shift["mean_shift"], width=0.9, color="C2")
    top.axhline(0, color="black", lw=0.8)
    top.set(ylabel="mean shift Δ (positions)", title="Where re-ranking moves the target, by its initial rank")
    bottom.bar(x, shift["count"], width=0.9, color="C7")
    bottom.set_yscale("symlog")
    bottom.set(xlabel="initial rank of the target in the filter's list (1 = top)", ylabel="queries")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _show_image(ax, path, title: str, framed: bool = False):
    """`_show` for a file path instead of a dataset name (the qualitative items carry paths)."""
    ax.imshow(load_image(path).convert("RGB"))
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=CAPTION)
    if framed:
        h, w = ax.get_images()[0].get_array().shape[:2]
        ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, ec=TARGET_COLOR, lw=4))


CAPTION = 13   # points: the qualitative figure is ~2000 px wide, so at 1280 px on a projector its captions stay ~10 px high


def plot_qualitative(qualitative: Sequence[dict], width: int = 18):
    """One row per query (paper Figs. 4–6 style): the reference with its text, the filter's top
    candidates (F #1…), then the same list after re-ranking (R #1…); the target framed in green.

    Each item: {"reference": path, "caption": str, "target": name,
                "filtered": [(name, path), ...], "reranked": [(name, path), ...]}."""
    n_f = max(len(q["filtered"]) for q in qualitative)
    n_r = max(len(q["reranked"]) for q in qualitative)
    n_cols = 1 + n_f + n_r
    fig, axes = plt.subplots(len(qualitative), n_cols, figsize=(1.5 * n_cols, 1.9 * len(qualitative)), squeeze=False)
    for r, q in enumerate(qualitative):
        _show_image(axes[r, 0], q["reference"], "reference")
        axes[r, 0].set_ylabel("\n".join(textwrap.wrap(q["caption"], width)), fontsize=CAPTION, rotation=0,
                              ha="right", va="center", labelpad=10)
        for offset, tag, items, n in ((1, "F", q["filtered"], n_f), (1 + n_f, "R", q["reranked"], n_r)):
            for c in range(n):
                ax = axes[r, offset + c]
                if c >= len(items):
                    ax.axis("off")
                    continue
                name, path = items[c]
                _show_image(ax, path, f"{tag} #{c + 1}", framed=name == q["target"])
    fig.suptitle("Reference + text | filter's top candidates (F) | after re-ranking (R); target framed in green",
                 fontsize=CAPTION + 2)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- model-inside figures
# Notebooks 01 (BLIP's encoders) and 03 (the dual-encoder layer): patch grids, attention maps
# over an image, similarity matrices, the mini-BLIP's pretraining curve, per-layer curves.

def _image_array(image) -> np.ndarray:
    """A normalised (3, H, W) tensor or an (H, W, 3) array -> (H, W, 3) array for imshow."""
    return to_display(image) if isinstance(image, torch.Tensor) else np.asarray(image)


def show_patch_grid(image, patch_size: int, numbers: bool = True):
    """The ViT's view of an image (docs/authors_code.md, 'BLIP backbones'): the (H/p) x (W/p) patches it cuts, numbered in
    the raster order of the token sequence (token 0 is [CLS], not a patch)."""
    img = _image_array(image)
    h, w = img.shape[:2]
    rows, cols = h // patch_size, w // patch_size
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.imshow(img, extent=(0, w, h, 0))
    for x in range(0, w + 1, patch_size):
        ax.axvline(x, color="white", lw=0.8, alpha=0.8)
    for y in range(0, h + 1, patch_size):
        ax.axhline(y, color="white", lw=0.8, alpha=0.8)
    if numbers and rows * cols <= 100:
        for r in range(rows):
            for c in range(cols):
                ax.text((c + 0.5) * patch_size, (r + 0.5) * patch_size, str(1 + r * cols + c), color="white",
                        fontsize=6, ha="center", va="center")
    ax.set(xlim=(0, w), ylim=(h, 0), xlabel="x (pixels)", ylabel="y (pixels)",
           title=f"{rows}×{cols} = {rows * cols} patches of {patch_size}×{patch_size} px\n"
                 f"→ tokens 1…{rows * cols}; token 0 is [CLS]")
    fig.tight_layout()
    return fig


def _draw_attention(ax, img: np.ndarray, weights: np.ndarray) -> None:
    """Attention over a (g, g) patch grid, scaled to [0, 1], drawn over the dimmed image: low
    weights let the image show through."""
    h, w = img.shape[:2]
    overlay = plt.get_cmap("inferno")(weights)                           # (g, g, 4) RGBA
    overlay[..., 3] = 0.15 + 0.75 * weights
    ax.imshow(img * 0.6, extent=(0, w, h, 0))
    ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")


def plot_token_attention(image, tokens: Sequence[str], maps: dict, title: str = "", vmax: float | None = None):
    """Attention of text tokens over an image's patches, drawn on the image: one row per
    entry of `maps` (name -> (n_tokens, g, g) attention over the g x g patch grid, e.g. one
    per stream), one column per token, the plain image first. Shared colour scale."""
    img = _image_array(image)
    rows = list(maps.items())
    vmax = vmax or max(float(m.max()) for _, m in rows)
    fig, axes = plt.subplots(len(rows), len(tokens) + 1, figsize=(1.45 * (len(tokens) + 1) + 1, 1.5 * len(rows) + 0.6),
                             squeeze=False, layout="constrained")
    for r, (name, m) in enumerate(rows):
        axes[r, 0].imshow(img)
        axes[r, 0].set_title("image" if r == 0 else "", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c, tok in enumerate(tokens, start=1):
            ax = axes[r, c]
            _draw_attention(ax, img, np.asarray(m[c - 1], dtype=float) / vmax)
            ax.set_title(tok, fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0, vmax), cmap="inferno")
    fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_similarity_matrix(sim, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
                           xlabel: str = "", ylabel: str = "", width: int = 28, fmt: str = "{:.2f}",
                           images: Sequence | None = None, colorbar_label: str = ""):
    """A (rows, cols) score matrix as a heatmap with its values written in; the diagonal
    (the matching pairs, by convention here) is outlined. With `images` (one per column,
    normalised (3, H, W) tensors), a thumbnail heads each column."""
    sim = np.asarray(sim, dtype=float)
    n_r, n_c = sim.shape
    fig = plt.figure(figsize=(1.0 * n_c + 3.8, 0.55 * n_r + 1.8 + (1.2 if images is not None else 0)),
                     layout="constrained")
    if images is not None:
        grid = fig.add_gridspec(2, n_c, height_ratios=(1.0, 0.5 * n_r))
        for j, img in enumerate(images):
            thumb = fig.add_subplot(grid[0, j])
            thumb.imshow(_image_array(img))
            thumb.set_xticks([]), thumb.set_yticks([])
            thumb.set_title(str(col_labels[j]), fontsize=7)
        ax = fig.add_subplot(grid[1, :])
    else:
        ax = fig.add_subplot()
    im = ax.imshow(sim, cmap="viridis", aspect="auto")
    for i in range(n_r):
        for j in range(n_c):
            ax.text(j, i, fmt.format(sim[i, j]), ha="center", va="center", fontsize=7,
                    color="black" if sim[i, j] > sim.mean() else "white")
    for i in range(min(n_r, n_c)):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec=TARGET_COLOR, lw=2))
    ax.set_yticks(range(n_r), ["\n".join(textwrap.wrap(str(s), width)) for s in row_labels], fontsize=7)
    ax.set_xticks(range(n_c), ["\n".join(textwrap.wrap(str(s), 14)) for s in col_labels], fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax, shrink=0.8, label=colorbar_label)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_pretraining_curve(meta: dict, batch_size: int | None = None):
    """The mini-BLIP's pretraining as recorded in its cirtutor.json (`meta["curve"]`): the ITC
    and ITM losses (left; dashed: chance, ln B for ITC and the 1/3-positive prior's entropy
    for ITM), held-out retrieval and ITM accuracy (middle), the temperature (right). A dotted
    line marks where each later phase (`curve["phase_start"]`: grounding, then narrowing) begins."""
    train, val = meta["curve"]["train"], meta["curve"].get("val", [])
    batch_size = batch_size or meta.get("recipe", {}).get("batch_size", 64)
    step = [r["step"] for r in train]
    fig, (ax_l, ax_v, ax_t) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_l.plot(step, [r["loss_itc"] for r in train], label="ITC loss", color="C0")
    ax_l.plot(step, [r["loss_itm"] for r in train], label="ITM loss", color="C1")
    ax_l.axhline(np.log(batch_size), color="C0", ls="--", lw=1, label=f"chance ITC: ln {batch_size}")
    prior = -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)
    ax_l.axhline(prior, color="C1", ls="--", lw=1, label="chance ITM: 1/3 positives")
    window = f", mean of {step[1] - step[0]} steps" if len(step) > 1 else ""
    ax_l.set(xlabel="training step", ylabel=f"loss (train{window})", title="ITC and ITM losses")
    if val:
        for key, label, color in (("i2t_r1", "image→text R@1", "C2"), ("i2t_r5", "image→text R@5", "C4"),
                                  ("itm_acc", "ITM accuracy", "C1"), ("itm_edit_acc", "ITM accuracy, one-edit texts", "C5")):
            rows = [r for r in val if key in r]
            if rows:
                ax_v.plot([r["step"] for r in rows], [r[key] for r in rows], "o-", color=color, label=label)
    ax_v.set(xlabel="training step", ylabel="fraction (held-out val pairs)", ylim=(0, 1.02),
             title="Held-out retrieval and matching")
    ax_t.plot(step, [r["temp"] for r in train], color="C3")
    ax_t.set_yscale("log")
    ax_t.set(xlabel="training step", ylabel="temperature λ (log scale)", title="Learned ITC temperature")
    for ax in (ax_l, ax_v, ax_t):
        ax.grid(alpha=0.3)
        starts = meta["curve"].get("phase_start") or []     # a continued recipe: where each later phase starts
        for start, name, ls in zip(starts if isinstance(starts, list) else [starts], ("grounding", "narrowing"),
                                   (":", "-.")):
            ax.axvline(start, color="grey", ls=ls, lw=1.2, label=f"{name} phase starts" if ax is ax_l else None)
    ax_l.legend(fontsize=7)
    ax_v.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_per_layer(curves: dict, ylabel: str, title: str, mark: float | None = None, mark_label: str = ""):
    """One line per entry of `curves` (name -> values at layer inputs 0…n, the last one the
    output); optionally a vertical line at x = `mark` (e.g. where the merge rule changes)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        ax.plot(range(len(values)), values, "o-", color=f"C{i}", label=name)
    n = max(len(v) for v in curves.values())
    if mark is not None:
        ax.axvline(mark, color="gray", ls="--", lw=1, label=mark_label or None)
    ax.set_xticks(range(n), [f"in {i}" if i < n - 1 else "out" for i in range(n)])
    ax.set(xlabel="entry to layer l (in l) / encoder output (out)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- stage-1 figures
# Notebook 02 (the candidate filter): Eq. 1's softmax at several temperatures, training-loss curves.

def plot_softmax_vs_temperature(sim, temps: Sequence[float], rows: Sequence[int] = (0,)):
    """Eq. 1's softmax over a batch's targets for a few queries (one row of panels per query)
    at several temperatures λ (one column each): p_j = softmax_j(sim[i, j] / λ), query i's own
    target (column i) in green; each panel gives p(target) and the loss −ln p(target).
    `sim` is the (B, B) cosine-similarity matrix, row = query, column = target."""
    sim = torch.as_tensor(sim).detach().cpu().double()                       # (B, B)
    n = sim.shape[1]
    fig, axes = plt.subplots(len(rows), len(temps), figsize=(2.6 * len(temps) + 0.6, 2.1 * len(rows) + 0.7),
                             squeeze=False, sharey=True)
    for r, i in enumerate(rows):
        for c, temp in enumerate(temps):
            log_p = (sim[i] / temp).log_softmax(-1).numpy()                   # (B,): exact even where p underflows
            p = np.exp(log_p)
            ax = axes[r, c]
            ax.bar(range(n), p, color=["C7" if j != i else TARGET_COLOR for j in range(n)], width=0.8)
            ax.text(0.98, 0.95, f"p(target) = {p[i]:.2f}\nloss = {abs(log_p[i]):.2f}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8)
            ax.set(ylim=(0, 1.05), xticks=range(n))
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"λ = {temp:g}", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"query {i}\nsoftmax prob.", fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel("target j (batch column)", fontsize=8)
    fig.suptitle("softmax over the batch's targets of cos(q_i, g_j) / λ; the query's own target in green", fontsize=10)
    fig.tight_layout()
    return fig


def moving_average(values, window: int) -> np.ndarray:
    """Mean of each value and the `window` − 1 before it (fewer at the start): same length."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[lo]) / (np.arange(1, len(values) + 1) - lo)


def plot_training_loss(curves: dict, chance: float | None = None, chance_label: str = "", window: int = 1,
                       title: str = "Training loss"):
    """Loss per optimisation step, one line per entry of `curves` (name -> history rows
    {"step", "loss", …}, as `History.train` or `trained_filter_history` give them). With
    `window` > 1 the raw losses are drawn faint and their moving average on top; `chance`
    draws a dashed horizontal line (e.g. ln B for Eq. 1 with uniform scores)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for i, (name, rows) in enumerate(curves.items()):
        step = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        if window > 1:
            ax.plot(step, loss, color=f"C{i}", alpha=0.25, lw=0.8)
            ax.plot(step, moving_average(loss, window), color=f"C{i}", label=f"{name} (mean of {window} steps)")
        else:
            ax.plot(step, loss, color=f"C{i}", label=name)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=chance_label or f"chance: {chance:.2f}")
    ax.set(xlabel="optimisation step", ylabel="loss (Eq. 1, per batch)", title=title, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_logit_matrices(S: dict, title: str = ""):
    """Several (B, B) logit matrices of one batch side by side (name -> matrix; row = query,
    column = target), each with its own colour scale and the diagonal (the matches) outlined."""
    fig, axes = plt.subplots(1, len(S), figsize=(3.3 * len(S), 3.4), layout="constrained", squeeze=False)
    for ax, (name, m) in zip(axes[0], S.items()):
        m = np.asarray(m, dtype=float)
        im = ax.imshow(m, cmap="viridis")
        for i in range(len(m)):
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec=TARGET_COLOR, lw=1.5))
        ax.set(title=f"{name}\nrange {m.min():.0f} … {m.max():.0f}", xlabel="column j", ylabel="row i")
        ax.set_xticks([]), ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.75)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_bars(ax, rows: dict[str, dict], keys: Sequence[str], title: str = "", colors: dict | None = None,
              hatches: dict | None = None):
    """Grouped bars on `ax`: one group per metric, one bar per row of {label: {metric: {"mean",
    "std"}}}, error bars = the std (0: no bar); `colors` / `hatches` by label (default: the C0… cycle, no hatch)."""
    width = 0.8 / len(rows)
    for i, (label, stats) in enumerate(rows.items()):
        x = np.arange(len(keys)) + (i - (len(rows) - 1) / 2) * width
        std = [stats[k]["std"] for k in keys]
        ax.bar(x, [stats[k]["mean"] for k in keys], width, yerr=std if any(std) else None, capsize=2,
               label=label, color=(colors or {}).get(label, f"C{i % 10}"), hatch=(hatches or {}).get(label),
               edgecolor="white" if (hatches or {}).get(label) else None)
    ax.set_xticks(range(len(keys)), keys)
    ax.set(title=title, ylabel="recall (%)")
    ax.grid(axis="y", alpha=0.3)


def plot_study(study: dict, keys: Sequence[str] = ("R@1", "R@5", "R@10", "Rs@1"), labels: dict | None = None):
    """A study's mean ± std over seeds (`cirtutor.study`) with a filter and a re-ranker stage: one
    panel per stage, one group of bars per metric, one bar per variant, error bars = sample std."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True, layout="constrained")
    for ax, (stage, name) in zip(axes, (("filter", "filter F"), ("rerank", f"re-ranker R_{study.get('k', 'K')}"))):
        rows = {(labels or {}).get(v, v): e["stats"][stage] for v, e in study["variants"].items()}
        plot_bars(ax, rows, keys, f"{name}, mean ± std over {study['seeds']} seeds")
    axes[0].legend(fontsize=8)
    return fig


def plot_zeroshot_study(rows: dict[str, dict], keys: Sequence[str] = ("R@1", "R@5", "R@10", "Rs@1"), title: str = ""):
    """The zero-shot comparison (`study.zeroshot_rows`): references in greys, each with its own hatch, zero-shot
    variants in colour (never grey), the supervised models black and hatched dark grey, one group of bars per metric."""
    references = [r for r in rows if "no training" in r]
    supervised = [r for r in rows if r.startswith("supervised")]
    variants = [r for r in rows if r not in references and r not in supervised]
    colors = dict(zip(variants, [f"C{i}" for i in range(10) if i != 7]))       # tab10 without its grey (C7)
    colors |= dict(zip(references, ("0.45", "0.65", "0.82"))) | dict(zip(supervised, ("0.05", "0.3")))
    hatches = dict(zip(references, ("//", "..", "xx"))) | dict(zip(supervised[1:], ("\\\\",)))
    fig, ax = plt.subplots(figsize=(12, 3.8), layout="constrained")
    plot_bars(ax, rows, keys, title, colors=colors, hatches=hatches)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return fig


def plot_hinge(tokens: Sequence[str], hop1, target_image, attention, title: str = ""):
    """TBIA's hinge on one triplet (notebook 08): left, hop 1, the composed query's token 0
    against each caption token (A1[0, k], a logit); right, the attention over the target's
    patches that o is read with (softmax of row 0 of A1 A2, (g, g)), drawn on the target."""
    img = _image_array(target_image)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), width_ratios=(1.6, 1), layout="constrained")
    hop1 = np.asarray(hop1, dtype=float)
    left.bar(range(len(tokens)), hop1, color=["C3" if v < 0 else "C0" for v in hop1])
    left.set_xticks(range(len(tokens)), tokens, rotation=60, fontsize=8)
    left.axhline(0, color="gray", lw=0.8)
    left.set(ylabel="A1[0, k]", title="hop 1: composed query token 0 → caption token k")
    weights = np.asarray(attention, dtype=float)
    _draw_attention(right, img, weights / max(weights.max(), 1e-12))
    right.set(title=f"softmax(A1 A2)[0] over the target's patches\nlargest weight {weights.max():.2f}")
    right.set_xticks([]), right.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig


def plot_findings(card: dict):
    """The findings scorecard as a figure (notebook 07, report.md): per finding, each seed's value
    (dots), the mean ± 2 standard errors (bar: the test of F1-F6), the paper's value (red diamond)
    and the verdict in the label (✓ reproduced, ✗ not, · not judged). F7 is a % decrease (dashed: its 15 %
    threshold), the others differences in recall points (grey band: F8's ±1 point)."""
    rows = card["findings"]
    labels = [f"{r['id']} {'✓' if r['reproduced'] else ('✗' if r['reproduced'] is False else '·')}  "
              f"{textwrap.shorten(r['statement'], 52, placeholder='…')}" for r in rows]
    points = pd.DataFrame([{"finding": label, "value": v, "seed": f"seed {s}"}
                           for label, r in zip(labels, rows) for s, v in zip(r["seeds"], r["values"]) if v is not None])
    fig, ax = plt.subplots(figsize=(9.5, 0.55 * len(rows) + 1.4))
    ax.axvline(0, color="0.6", lw=0.8)
    if len(points):
        sns.stripplot(data=points, x="value", y="finding", hue="seed", order=labels, ax=ax, size=6, jitter=0.12,
                      palette="crest", alpha=0.85)
    for y, r in enumerate(rows):
        if r["mean"] is not None:
            err = 2 * r["se"] if r["se"] is not None else 0
            ax.errorbar(r["mean"], y, xerr=err, fmt="o", color="black", ms=4, capsize=4, lw=1.4, zorder=5,
                        label="mean ± 2 SE" if y == 0 else None)
        ax.plot(r["paper"], y, marker="D", color="crimson", ms=7, ls="none", zorder=6,
                label="the paper" if y == 0 else None)
        if r["test"] == findings.DECREASE:                 # F7's and F8's fixed thresholds, drawn on their rows
            ax.plot([findings.DECREASE_MIN] * 2, [y - 0.3, y + 0.3], color="0.35", ls="--", lw=1)
        elif r["test"] == findings.FLAT:
            ax.fill_betweenx([y - 0.3, y + 0.3], -findings.FLAT_MAX, findings.FLAT_MAX, color="0.85", zorder=0)
    n = len(card["seeds"])
    ax.set_xlabel("recall points (F1-F6: model a − model b; F8: R_Kmax − R_K) · F7: % decrease of the mean rank")
    ax.set_ylabel("")
    judged = "" if card["judged"] == card["total"] else f", {card['judged']} judged"
    ax.set_title(f"Which of the paper's findings this run reproduces: {card['reproduced']} of {card['total']} "
                 f"({n} seed{'s' * (n != 1)}{judged}, K = {card.get('k')})")
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, names, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def plot_epoch_losses(runs: list[dict], labels: dict[str, str], batch_size: int):
    """Each model's mean training loss per epoch, one panel per model and one line per seed (notebook 07),
    from a findings study's records ("epoch_losses"). The dashed line is ln B, the loss of a model that
    scores the B candidates of its batch alike: a curve that stays there never learned."""
    rows = pd.DataFrame([{"model": labels.get(name, name), "seed": f"seed {r['seed']}", "epoch": e + 1, "loss": v}
                         for r in runs for name, losses in r.get("epoch_losses", {}).items()
                         for e, v in enumerate(losses)])
    if rows.empty:
        raise ValueError("the study's records hold no epoch losses (record them with findings.seed_records)")
    order = [labels.get(n, n) for n in runs[0]["epoch_losses"]]
    grid = sns.relplot(data=rows, x="epoch", y="loss", hue="seed", col="model", col_order=order, kind="line",
                       marker="o", palette="crest", height=2.6, aspect=0.9, facet_kws={"sharey": True})
    for ax in grid.axes.flat:
        ax.axhline(np.log(batch_size), color="0.4", ls="--", lw=1)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"training loss per epoch (dashed: ln {batch_size}, a model that has learned nothing)",
                         y=1.04, fontsize=10)
    return grid.figure
