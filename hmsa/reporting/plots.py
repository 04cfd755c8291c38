"""Drawing the report's figures with matplotlib: titled panel grids with column headers and a class
legend in the dataset's own colours (Figures 4, 5), the per-scale Figure 3 with an attention colour
bar, and the training curves. ``hmsa.reporting.figures`` gathers the pictures; this module only draws.

matplotlib is imported inside the functions: ``hmsa`` starts without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hmsa.io import atomic_write
from hmsa.reporting.visualize import class_names, label_ids, palette

PANEL_W = 3.0  # inches per tile column; tiles are drawn at their own aspect ratio
ATTENTION_CMAP = "viridis"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    _pyplot().close(fig)


def _legend(fig: Any, dataset: str, tiles: list[np.ndarray]) -> None:
    """One patch per class whose colour occurs in ``tiles`` (label maps), below the panels."""
    from matplotlib.patches import Patch

    names, pal = class_names(dataset), palette(dataset)
    ids = label_ids(tiles, dataset)
    handles = [Patch(facecolor=pal[i] / 255, edgecolor="0.5",
                     label="ignore / unlabelled" if i == 255 else names[i]) for i in ids]
    if not handles:  # e.g. a grid an older version drew with other colours: say so, never guess
        fig.text(0.5, 0.005, f"(no class legend: the label colours are not the {dataset} palette; re-run the "
                 "evaluation to redraw them)", ha="center", va="bottom", fontsize="small")
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(5, len(handles)), fontsize="small",
                   title=f"classes shown ({dataset} colours)", title_fontsize="small", frameon=False)


def _show(ax: Any, tile: np.ndarray, title: str = "", **kwargs: Any) -> Any:
    im = ax.imshow(tile, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="medium")
    return im


def _height(tile: np.ndarray) -> float:
    return PANEL_W * tile.shape[0] / tile.shape[1]


def panel_grid(path: Path, rows: list[list[np.ndarray]], headers: list[str], row_labels: list[str], title: str,
               dataset: str, label_cols: tuple[int, ...]) -> None:
    """Rows of equal-length tile lists under column ``headers``; ``label_cols``: the columns holding
    colourised label maps, whose classes make the legend."""
    plt = _pyplot()
    ncol = len(headers)
    fig, axes = plt.subplots(len(rows), ncol, squeeze=False, layout="constrained",
                             figsize=(PANEL_W * ncol + 0.6, _height(rows[0][0]) * len(rows) + 2.2))
    for i, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        for j, tile in enumerate(row):
            _show(axes[i, j], tile, headers[j] if i == 0 else "")
        axes[i, 0].set_ylabel(label, fontsize="small")
    fig.suptitle(title, fontsize="large")
    _legend(fig, dataset, [row[j] for row in rows for j in label_cols])
    _save(fig, path)


def figure3(path: Path, rows: list[list[np.ndarray]], scales: list[float], dataset: str, method: str,
            title: str) -> None:
    """``rows`` as ``hmsa.reporting.visualize.save_scale_maps`` wrote them: [image, ground truth, fused], then per
    scale [prediction, attention (grey 0-255)]. Top row three panels; one row per scale below, its
    prediction and attention side by side, the attention's colour bar on the right."""
    plt = _pyplot()
    n = len(scales)
    h = _height(rows[0][0])
    fig = plt.figure(layout="constrained", figsize=(PANEL_W * 3 + 1.4, h * (n + 1) + 2.4))
    # six half-columns: the top row's three panels take two each, a scale row's two panels sit centred
    gs = fig.add_gridspec(n + 1, 7, width_ratios=[1] * 6 + [0.18])
    top = ("input image", "ground truth", "fused prediction")
    for j, (tile, head) in enumerate(zip(rows[0][:3], top, strict=True)):
        _show(fig.add_subplot(gs[0, 2 * j:2 * j + 2]), tile, head)
    what = "softmax weight" if method == "explicit" else "attention α"
    im = None
    for k, (scale, row) in enumerate(zip(scales, rows[1:], strict=True)):
        ax = fig.add_subplot(gs[k + 1, 1:3])
        _show(ax, row[0], f"scale {scale:g}: prediction")
        ax.set_ylabel(f"scale {scale:g}", fontsize="medium")
        if len(row) > 1:
            unused = method == "hierarchical" and k == n - 1  # eq. 1: the highest scale's α is not used
            note = " (unused: highest scale)" if unused else ""
            im = _show(fig.add_subplot(gs[k + 1, 3:5]), row[1][..., 0] / 255.0, f"scale {scale:g}: {what}{note}",
                       cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0)
    if im is not None:
        bar = fig.colorbar(im, cax=fig.add_subplot(gs[1:, 6]))
        bar.set_label(f"{what} (1 = this scale's prediction is used)", fontsize="small")
    fig.suptitle(title, fontsize="large")
    _legend(fig, dataset, [rows[0][1], rows[0][2], *(r[0] for r in rows[1:])])
    _save(fig, path)


def curve_styles(stages: list[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """(colour, line style) per stage, all distinct: a stage's seeded runs (``<stage>_seed<k>``) share
    its colour and differ in line style; up to 20 stages get 20 colours, more cycle with new styles."""
    plt = _pyplot()
    bases = list(dict.fromkeys(stage.split("_seed")[0] for stage in stages))
    cmap = plt.get_cmap("tab20" if len(bases) > 10 else "tab10")
    styles = ("-", "--", ":", "-.")
    out = {}
    for stage in stages:
        base, _, seed = stage.partition("_seed")
        i = bases.index(base)
        k = (int(seed) if seed.isdigit() else 0) + i // cmap.N  # past the palette: another style
        out[stage] = (tuple(cmap(i % cmap.N)), styles[k % len(styles)])
    return out


def curves(data: dict[str, dict[str, list[tuple[int, float]]]], path: Path,
           panels: tuple[tuple[str, str], ...]) -> None:
    """One panel per (metric, y-axis label), x = iteration; one line per stage (:func:`curve_styles`)
    and one legend for all panels."""
    plt = _pyplot()
    styles = curve_styles(list(data))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2.5, 4.5), layout="constrained",
                             squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        drawn = [(stage, hist[key]) for stage, hist in data.items() if hist.get(key)]
        for stage, pts in drawn:
            steps, values = zip(*pts, strict=True)
            color, style = styles[stage]
            ax.plot(steps, values, label=stage, color=color, linestyle=style,
                    marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.3)
        # identical curves (every stage's poly schedule with one base lr) hide each other: say so
        groups: dict[tuple, list[str]] = {}
        for stage, pts in drawn:
            groups.setdefault(tuple(pts), []).append(stage)
        shared = [g for g in groups.values() if len(g) > 1]
        if shared:
            text = "\n".join(f"{len(g)} stages share one curve (drawn on top of each other)" if len(g) > 3
                             else f"identical: {', '.join(g)}" for g in shared)
            ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize="small",
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} per training stage")
        ax.grid(alpha=0.3)
    lines = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()}  # a stage once, any panel
    fig.legend(list(lines.values()), list(lines), loc="outside right upper", fontsize="small", title="stage")
    fig.suptitle("Training curves of every training stage (from MLflow)")
    _save(fig, path)
