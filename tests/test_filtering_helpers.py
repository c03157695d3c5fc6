"""The stage-1 figures of cirtutor.viz (notebook 02): Eq. 1's softmax per temperature and the
training-loss curves draw what they claim."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from cirtutor.viz import TARGET_COLOR, moving_average, plot_softmax_vs_temperature, plot_training_loss


def test_softmax_panels_show_each_rows_softmax_per_temperature():
    sim = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.4, 0.8], [0.0, 0.0, 0.0]])
    fig = plot_softmax_vs_temperature(sim, temps=(1.0, 0.1), rows=(0, 1))
    assert len(fig.axes) == 4                                                       # 2 rows x 2 temperatures
    assert [ax.get_title() for ax in fig.axes[:2]] == ["λ = 1", "λ = 0.1"]
    ax = fig.axes[3]                                                                # query 1 at λ = 0.1
    expected = (sim[1] / 0.1).softmax(-1).numpy()
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], expected, rtol=1e-6)
    green = [i for i, bar in enumerate(ax.patches) if bar.get_facecolor()[:3] == matplotlib.colors.to_rgb(TARGET_COLOR)]
    assert green == [1]                                                             # query 1's own target
    assert f"loss = {-math.log(expected[1]):.2f}" in ax.texts[0].get_text()


def test_softmax_panels_survive_a_tiny_temperature():
    fig = plot_softmax_vs_temperature(np.array([[0.1, 0.9], [0.5, 0.4]]), temps=(0.001,))
    text = fig.axes[0].texts[0].get_text()
    assert "p(target) = 0.00" in text and "loss = 800.00" in text                      # exact, no underflow


def test_moving_average():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    np.testing.assert_allclose(moving_average([1, 2, 3], 10), [1, 1.5, 2])


@pytest.mark.parametrize("window", [1, 3])
def test_training_loss_curves(window):
    rows = [{"step": s, "loss": 4.0 / s, "lr": 1e-3} for s in range(1, 11)]
    fig = plot_training_loss({"a": rows, "b": rows[:5]}, chance=math.log(64), chance_label="ln 64", window=window)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * (2 if window > 1 else 1) + 1                        # (raw +) mean per curve, chance
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(math.log(64))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[-1] == "ln 64" and labels[0].startswith("a")
    assert list(ax.lines[window > 1].get_xdata()) == list(range(1, 11))
