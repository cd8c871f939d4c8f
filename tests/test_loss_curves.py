"""Loss curves as mean and band over seeds, a marker for a run that logged one point, PNG + PDF: the compare and
study reports (:func:`jit_core.eval.plots.plot_loss_bands`), single runs (:func:`jit_core.eval.figures.plot_losses`)
and run folders grouped into arms (:func:`jit_core.eval.loss_curves.plot_run_losses`, the API's entry point)."""
from __future__ import annotations

import json

import matplotlib
import pytest

from jit_core.eval import figures, loss_curves, plots

matplotlib.use("Agg")


def _log(steps, losses, t0=0.0):
    return [{"step": s, "loss": v, "time": t0 + s, "loss/pixel": 2 * v} for s, v in zip(steps, losses)]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the loss plots save, kept open for inspection (their files are still written)."""
    import matplotlib.pyplot as plt
    figs = []

    def keep(fig, stem, dpi=110):   # plots.save_png_pdf without closing the figure
        figs.append({ax.get_title(): ax for ax in fig.axes})
        return [plots.durable.save_figure(stem.with_name(f"{stem.name}.{fmt}"), fig, dpi=dpi) for fmt in plots.FORMATS]

    monkeypatch.setattr(plots, "save_png_pdf", keep)
    yield figs
    plt.close("all")


def _markers(ax):
    return [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines if ln.get_marker() == "o"]


def test_a_run_that_logged_one_point_is_a_marker_not_an_invisible_line(drawn, tmp_path):
    png = figures.plot_losses({"long": _log([1, 2, 3], [1.0, 0.5, 0.2]), "short": _log([5], [0.9])},
                              tmp_path / "loss.png")
    assert png == tmp_path / "loss.png" and png.is_file()
    assert (tmp_path / "loss.pdf").read_bytes().startswith(b"%PDF")       # every figure as PNG and PDF
    ax = drawn[0]["loss"]
    assert _markers(ax) == [([5], [0.9])]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["long", "short, one point (step 5)"]              # one run per curve: no seed count
    assert _markers(drawn[0]["loss/pixel"]) == [([5], [1.8])]


def test_seed_bands_mean_band_and_markers_per_arm(drawn, tmp_path):
    arms = {"JiT": [_log([1, 2, 3], [1.0, 0.5, 0.2]), _log([1, 2, 3], [3.0, 1.5, 0.4])],
            "short": [_log([4], [0.9]), _log([4], [0.7])]}
    png, pdf = plots.plot_loss_bands(arms, tmp_path / "bands")
    assert (png.name, pdf.name) == ("bands.png", "bands.pdf")
    ax = drawn[0]["loss"]
    raw_mean = ax.lines[0]
    assert list(raw_mean.get_ydata()) == pytest.approx([2.0, 1.0, 0.3])   # the mean over the two seeds
    (band,) = ax.collections[:1]
    ys = band.get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(0.2) and max(ys) <= 3.0                # the band spans min..max (smoothed)
    (marker,) = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert list(marker.get_xdata()) == [4] and list(marker.get_ydata()) == [pytest.approx(0.8)]
    assert ax.get_legend_handles_labels()[1] == ["JiT (n=2)", "short (n=2), one point (step 4)"]


def test_a_loss_falling_by_decades_is_drawn_in_log_scale(drawn, tmp_path):
    figures.plot_losses({"a": _log([1, 2, 3], [10.0, 1.0, 0.1])}, tmp_path / "decades")
    assert drawn[0]["loss"].get_yscale() == "log"
    figures.plot_losses({"a": _log([1, 2, 3], [1.0, 0.8, 0.6])}, tmp_path / "flat")
    assert drawn[1]["loss"].get_yscale() == "linear"


def test_only_png_and_pdf_names_and_step_or_time(tmp_path):
    with pytest.raises(ValueError, match="figures are written as PNG and PDF; name the file .png"):
        figures.plot_losses({"a": _log([1, 2], [1.0, 0.5])}, tmp_path / "loss.jpg")
    with pytest.raises(ValueError, match="'step' or 'time'"):
        plots.plot_loss_bands({"a": [_log([1, 2], [1.0, 0.5])]}, tmp_path / "loss", x="wall")
    assert not list(tmp_path.iterdir())


def _run(folder, steps, losses):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log(steps, losses)) + "not json\n")
    return folder


def test_run_folders_grouped_into_arms(drawn, tmp_path):
    seeds = [_run(tmp_path / "jit" / f"seed-{i}", [1, 2, 3], [1.0 + i, 0.5 + i, 0.2 + i]) for i in range(3)]
    short = _run(tmp_path / "vco" / "seed-0", [2], [0.7])
    png, pdf = loss_curves.plot_run_losses({"JiT": seeds, "V-Co": [short]}, tmp_path / "out" / "loss.png", x="time")
    assert png.is_file() and pdf.is_file() and pdf.suffix == ".pdf"
    ax = drawn[0]["loss"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([2.0, 1.5, 1.2])    # mean of the 3 seeds' logs
    assert ax.get_legend_handles_labels()[1] == ["JiT (n=3)", "V-Co, one point"]
    assert ax.get_xlabel() == "wall clock (s)"


def test_run_folders_bad_input_is_one_line(tmp_path):
    run = _run(tmp_path / "a", [1], [1.0])
    with pytest.raises(FileNotFoundError, match=r"is not a run folder \(no config.json\)"):
        loss_curves.plot_run_losses({"A": [run, tmp_path / "nothing"]}, tmp_path / "loss.png")
    with pytest.raises(TypeError, match="give a list of run folders"):
        loss_curves.plot_run_losses({"A": str(run)}, tmp_path / "loss.png")
    with pytest.raises(ValueError, match="arm 'A' has no runs"):
        loss_curves.plot_run_losses({"A": []}, tmp_path / "loss.png")
