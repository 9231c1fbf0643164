"""unoflux.plots: round ticks, NumPy's binning rule, and data coordinates that land where they should."""

from __future__ import annotations

from unoflux import plots


def test_ticks_are_round_steps_covering_the_range():
    assert plots.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.nice_ticks(-0.23, 0.12) == [-0.2, -0.1, 0, 0.1]
    assert plots.nice_ticks(0, 37, 4) == [0, 10, 20, 30]
    assert plots.nice_ticks(2, 2) == [2]


def test_bins_follow_numpys_rule_the_last_bin_closed():
    assert plots.bin_counts([0, 0.5, 1, 1, 2], [0, 1, 2]) == [2, 3]
    assert plots.bin_counts([], [0, 1]) == [0]


def test_drawing_lands_in_data_coordinates():
    axes = plots.Axes((0, 10), (0, 1), size=(300, 200), title="t", x_label="x", y_label="y")
    (x0, y0, x1, y1) = axes.box
    assert axes.at(0, 0) == (x0, y1) and axes.at(10, 1) == (x1, y0)
    axes.bars([2], [4], [0.5], plots.RED, label="bar")
    px, py = axes.at(3, 0.25)  # inside the bar
    assert axes.image.getpixel((int(px), int(py))) == plots.RED
    axes.vline(20, plots.BLUE)  # outside the x range: not drawn
    assert plots.BLUE not in [c for _, c in axes.image.getcolors(1 << 16)]
    axes.legend("bottom left")
    assert [label for label, _ in axes.entries] == ["bar"]


def test_histogram_puts_groups_side_by_side_within_each_bin():
    plot = plots.histogram({"a": ([1, 0], plots.RED), "b": ([0, 2], plots.BLUE)}, [0, 1, 2])
    assert [label for label, _ in plot.entries] == ["a (1)", "b (2)"]
    red = plot.at(0.3, 0.5)  # the first group's bar in the first bin: x in [0.1, 0.5]
    blue = plot.at(1.7, 1.0)  # the second group's bar in the second bin: x in [1.5, 1.9]
    assert plot.image.getpixel(tuple(map(int, red))) == plots.RED
    assert plot.image.getpixel(tuple(map(int, blue))) == plots.BLUE
