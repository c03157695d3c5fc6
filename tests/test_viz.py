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
