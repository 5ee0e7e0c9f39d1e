"""The figures' look (`prefstudy.theme`): palettes pinned and restored, orders, global style
left alone, and files whose bytes repeat."""

import os
import subprocess
import sys

import matplotlib as mpl
import pandas as pd
import pytest
import seaborn as sns
from matplotlib.colors import to_rgb

from prefstudy import plots, theme

# ------------------------------------------------------------------------------------- palette


def test_label_palette_is_fixed_by_sorted_labels():
    a = theme.label_palette(["simpo", "dpo", "naive-sum", "dpo"])
    b = theme.label_palette(["naive-sum", "simpo", "dpo"])
    assert a == b
    assert list(a) == ["dpo", "naive-sum", "simpo"]
    assert len(set(a.values())) == 3
    many = theme.label_palette([f"l{i:02d}" for i in range(14)])  # beyond the base palette
    assert len(set(many.values())) == 14


def test_set_style_pins_the_study_palette_for_subsets(monkeypatch):
    monkeypatch.setattr(theme, "_study_palette", None)
    study = ["dpo", "dpop", "naive-mean", "naive-sum", "simpo"]
    with mpl.rc_context():  # set_style changes global rcParams; restore them after
        theme.set_style(labels=study)
        paper = sns.plotting_context("paper")
        assert mpl.rcParams["axes.labelsize"] == paper["axes.labelsize"]
    pinned = theme.label_palette(study)
    table = pd.DataFrame({"label": ["dpop", "simpo"], "grad_cos": [0.1, 0.2]})
    ax = plots.interval_plot(table)
    colours = [to_rgb(line.get_color()) for line in ax.get_lines()]
    assert colours == [to_rgb(pinned["dpop"]), to_rgb(pinned["simpo"])]
    # without the pin, the subset is coloured by its own sorted order
    monkeypatch.setattr(theme, "_study_palette", None)
    ax = plots.interval_plot(table)
    assert to_rgb(ax.get_lines()[0].get_color()) == to_rgb(theme.label_palette(["dpop"])["dpop"])


FAMILIES = {"naive-sum": "likelihood", "negative_only": "likelihood", "sft": "likelihood",
            "naive-mean": "length-normalised", "simpo": "length-normalised",
            "dpo": "reference-based", "ipo": "reference-based", "dpop": "anchored"}


def test_family_palette_is_one_hue_per_family_in_lightness_steps():
    from colorsys import rgb_to_hls

    palette = theme.family_palette(FAMILIES)
    assert list(palette) == ["naive-sum", "negative_only", "sft", "naive-mean", "simpo", "dpo",
                             "ipo", "dpop"]  # family by family, sorted within each
    base = sns.color_palette(theme.BASE_PALETTE)
    hues = {f: rgb_to_hls(*base[i])[0] for f, i in theme.FAMILY_HUES.items()}
    assert len({round(h, 2) for h in hues.values()}) == 4
    for label, colour in palette.items():
        assert rgb_to_hls(*colour)[0] == pytest.approx(hues[FAMILIES[label]], abs=1e-6)
    # within a family: darkest first in sorted order, none near white or black
    lightness = [rgb_to_hls(*palette[lab])[1] for lab in ("naive-sum", "negative_only", "sft")]
    assert lightness == sorted(lightness) and len(set(lightness)) == 3
    assert all(0.12 < v < 0.85 for v in (rgb_to_hls(*c)[1] for c in palette.values()))
    # a family's only label is the hue itself
    assert palette["dpop"] == pytest.approx(tuple(base[theme.FAMILY_HUES["anchored"]]))
    # the same labels and families, in any order, give the same colours
    assert theme.family_palette(dict(reversed(list(FAMILIES.items())))) == palette
    with pytest.raises(ValueError, match="unknown family.*allowed: likelihood"):
        theme.family_palette({"dpo": "dpo-like"})


def test_family_hues_name_exactly_the_objectives_families():
    from prefstudy.objectives import FAMILIES as DECLARED

    assert set(theme.FAMILY_HUES) == set(DECLARED)


def test_family_order_lists_family_by_family_in_the_given_order():
    given = {"dpo": "reference-based", "simpo": "length-normalised", "dpop": "anchored",
             "naive-sum": "likelihood", "orpo": "length-normalised", "sft": "likelihood"}
    assert theme.family_order(given) == ["naive-sum", "sft", "simpo", "orpo", "dpo", "dpop"]
    with pytest.raises(ValueError, match="unknown family"):
        theme.family_order({"dpo": "reference"})


def test_set_style_pins_the_family_palette(monkeypatch):
    monkeypatch.setattr(theme, "_study_palette", None)
    with mpl.rc_context():
        theme.set_style(list(FAMILIES), families=FAMILIES)
        with pytest.raises(ValueError, match="no family for"):
            theme.set_style(["dpo", "rpo"], families=FAMILIES)
    table = pd.DataFrame({"label": ["simpo", "dpo"], "grad_cos": [0.1, 0.2]})
    ax = plots.interval_plot(table)
    pinned = theme.family_palette(FAMILIES)
    assert [to_rgb(line.get_color()) for line in ax.get_lines()] == [
        to_rgb(pinned["dpo"]), to_rgb(pinned["simpo"])]


def test_figures_do_not_change_global_style():
    before = dict(mpl.rcParams)
    plots.interval_plot(pd.DataFrame({"label": ["dpo"], "grad_cos": [0.1]}))
    assert {k: v for k, v in mpl.rcParams.items() if before[k] != v} == {}


def test_bins_written_as_text_sort_by_their_bounds():
    assert theme.order_of(["(0.3, 1]", "[0, 0.1]", "(0.1, 0.3]"]) == [
        "[0, 0.1]", "(0.1, 0.3]", "(0.3, 1]"]
    assert theme.order_of(["simpo", "dpo"]) == ["dpo", "simpo"]
    assert theme.order_of([4, 0.5, 2]) == [0.5, 2, 4]


# ---------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_save_is_byte_for_byte_repeatable(tmp_path, suffix):
    frame = pd.DataFrame({"normalisation": ["sum"] * 3 + ["mean"] * 3,
                          "dlen": [0.0, 1.0, 2.0] * 2, "gap_value": [0.0, 1.0, 2.0, 1.0, 0.0, 1.0]})
    grid = plots.gap_vs_length(frame)
    first = theme.save(grid, tmp_path / "a" / f"fig.{suffix}")
    second = theme.save(grid.figure, tmp_path / f"fig.{suffix}")
    data = first.read_bytes()
    assert data == second.read_bytes()
    assert mpl.__version__.encode() not in data  # no "Matplotlib vX.Y" creator/software
    assert b"CreationDate" not in data and b"<dc:date>" not in data


def test_save_png_dpi_and_errors(tmp_path):
    from PIL import Image

    ax = plots.interval_plot(pd.DataFrame({"label": ["dpo"], "grad_cos": [0.1]}))
    path = theme.save(ax, tmp_path / "fig.png", dpi=100)
    with Image.open(path) as image:
        assert round(image.info["dpi"][0]) == 100
        assert "Software" not in image.info
    with pytest.raises(ValueError, match="format"):
        theme.save(ax, tmp_path / "fig.jpg")
    with pytest.raises(TypeError):
        theme.save("not a figure", tmp_path / "fig.png")


def test_works_headless_without_choosing_a_backend(tmp_path):
    """A fresh interpreter with no display and no MPLBACKEND draws and saves (Agg fallback)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY",
                                                            "MPLBACKEND")}
    code = ("import pandas as pd; from prefstudy import plots, theme; "
            "ax = plots.interval_plot(pd.DataFrame({'label': ['dpo'], 'grad_cos': [0.5]})); "
            f"theme.save(ax, {str(tmp_path / 'h.png')!r}); "
            "import matplotlib; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"
    assert (tmp_path / "h.png").stat().st_size > 0
