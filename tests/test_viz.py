"""The notebook figures draw from package data without error and show what they claim."""
import matplotlib

matplotlib.use("Agg")

from PIL import Image

from cirtutor.data import CIRR, FashionIQ
from cirtutor.viz import TARGET_COLOR, plot_two_stage_overview, show_preprocessing, show_queries


def test_overview_figure():
    fig = plot_two_stage_overview(k=20)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "top-20" in texts and "Encoder-z_t" in texts


def test_show_queries_frames_the_target(cirr_root, fiq_root):
    fig = show_queries(CIRR(cirr_root, "val"), [0, 1])
    assert len(fig.axes) == 12  # 2 rows x (reference + 5 subset members)
    framed = [ax.get_title() for ax in fig.axes if any(p.get_edgecolor()[:3] == matplotlib.colors.to_rgb(TARGET_COLOR)
                                                       for p in ax.patches)]
    assert framed == ["target", "target"]
    assert len(show_queries(FashionIQ(fiq_root, "val", "dress"), [0]).axes) == 2


def test_show_preprocessing_panels():
    fig = show_preprocessing(Image.new("RGB", (160, 64), (200, 0, 0)), resolution=32)
    assert [ax.get_title() for ax in fig.axes] == ["original 160×64", "TargetPad(1.25) 160×128", "model input (3, 32, 32)"]


def test_logit_matrices_and_study_figures():
    import numpy as np

    from cirtutor.viz import plot_logit_matrices, plot_study, plot_zeroshot_study

    fig = plot_logit_matrices({"S_f": np.eye(3), "S_ctr": -np.eye(3)})
    assert [t for ax in fig.axes if (t := ax.get_title().split("\n")[0])] == ["S_f", "S_ctr"]
    stat = {k: {"mean": 10.0, "std": 1.0} for k in ("R@1", "R@5")}
    study = {"seeds": 3, "k": 50, "variants": {v: {"stats": {"filter": stat, "rerank": stat}} for v in ("a", "b")}}
    fig = plot_study(study, keys=("R@1", "R@5"), labels={"a": "plain"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["plain", "b"]
    assert len(fig.axes[1].patches) == 4                  # 2 metrics x 2 variants
    rows = {"image only (no training)": stat, "baseline": stat, "supervised filter F": stat}
    fig = plot_zeroshot_study(rows, keys=("R@1", "R@5"))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(rows) and len(fig.axes[0].patches) == 6
    reference, variant = fig.axes[0].patches[0], fig.axes[0].patches[2]
    assert reference.get_facecolor()[:3] == (0.45, 0.45, 0.45) and reference.get_hatch() == "//"   # references grey, hatched
    r, g, b = variant.get_facecolor()[:3]
    assert max(r, g, b) - min(r, g, b) > 0.2               # a zero-shot variant in colour, never one of the greys


def test_hinge_figure():
    import numpy as np

    from cirtutor.viz import plot_hinge

    fig = plot_hinge(["make", "it", "red"], [0.5, -1.0, 2.0], np.zeros((16, 16, 3)), np.full((4, 4), 1 / 16))
    assert len(fig.axes[0].patches) == 3 and "0.06" in fig.axes[1].get_title()
