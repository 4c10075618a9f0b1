"""Figures of the meters, after Arora et al. (2018): the attenuation curves (Figure 3), the bound chart
(Figure 4) and the cushion distributions. matplotlib is imported only when a figure is drawn (Agg backend
when saving without a display)."""

from __future__ import annotations

import math

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("plots need matplotlib: `pip install matplotlib`") from err
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


MAX_LEGEND = 12  # above this many curves a colorbar replaces the legend (a DenseNet has 120 layers)
MAX_TICKS = 30  # above this many layers only every n-th name is written


def layer_ticks(ax, names):
    """Layer names as x tick labels, every n-th one beyond MAX_TICKS layers."""
    step = max(1, math.ceil(len(names) / MAX_TICKS))
    ax.set_xticks(range(0, len(names), step))
    ax.set_xticklabels(names[::step], rotation=45, ha="right", fontsize=7)


def _gamma_text(gamma) -> str:
    return "undefined" if gamma is None or not math.isfinite(gamma) else f"{gamma:.3g}"


def _finish(fig, ax, path):
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return ax


def plot_attenuation(report, ax=None, path=None):
    """One curve per injection layer i: mean r[i, j] over observation layers j >= i, log-scale y, with the
    95% interval as a band and, in reduced precision, the alpha = 0 floor dotted. Returns the axes.

    Undefined entries (NaN: layer j does not depend on layer i, or its output is zero) are left out, not
    drawn; where an interval reaches zero only its upper half is drawn (a log axis has no zero).
    """
    plt = _pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 4.5))
    num = len(report.layers)
    colors = plt.cm.viridis(np.linspace(0, 0.9, num))
    for i in range(num):
        j = np.arange(i, num)
        mean, lo, hi = report.mean[i, i:], report.ci_low[i, i:], report.ci_high[i, i:]
        shown = np.isfinite(mean) & (mean > 0)
        ax.plot(j[shown], mean[shown], marker="o" if num <= MAX_LEGEND else None, ms=3, lw=1, color=colors[i],
                label=report.layers[i])
        band = shown & np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(j[band], np.where(lo > 0, lo, mean)[band], hi[band], color=colors[i], alpha=0.15,
                        linewidth=0)
    if report.floor is not None:
        with np.errstate(invalid="ignore"):
            floor = np.array([np.nan if np.all(np.isnan(c)) else np.nanmax(c) for c in report.floor.T])
        shown = np.isfinite(floor) & (floor > 0)
        ax.plot(np.arange(num)[shown], floor[shown], ls=":", color="gray",
                label=f"floor ({report.precision}, alpha = 0)")
    ax.set_yscale("log")
    layer_ticks(ax, list(report.layers))
    ax.set_xlabel("observation layer j")
    ax.set_ylabel("||x_hat^j - x^j|| / ||x^j||")
    ax.set_title(f"noise attenuation: alpha = {report.alpha:g}, {report.trials} trials, {report.n_samples} samples")
    if num <= MAX_LEGEND:
        ax.legend(fontsize=6, ncol=2 if num > 8 else 1, title="injected at", title_fontsize=7)
    else:  # a legend of 100+ entries would cover the curves: colors by injection index instead
        mappable = plt.cm.ScalarMappable(cmap=plt.cm.viridis, norm=plt.Normalize(0, (num - 1) / 0.9))
        fig.colorbar(mappable, ax=ax, label="injection layer index")
    return _finish(fig, ax, path)


BOUND_LABELS = {
    # what a reader sees; the JSON keys stay "ours" / "ours_conv"
    "ours": "Arora et al. 2018 bound (chain)",
    "ours_conv": "Arora et al. 2018 bound (conv, sec. 5; UNVERIFIED form)",
    "parameters": "# parameters",
    "spectral_bartlett2017": "spectral (Bartlett et al. 2017)",
    "pac_bayes_neyshabur2018": "PAC-Bayes (Neyshabur et al. 2018)",
    "l1_bartlett_mendelson2002": "l1 (Bartlett-Mendelson 2002)",
}


def plot_bounds(bound: dict, ax=None, path=None):
    """The paper's log-scale bar chart of effective numbers of parameters (bound["log10"]): the chain bound
    "ours" (Theorem 4.1 on the unrolled operators) and, when measured, the conv bound "ours_conv" (with beta
    and the filter/stride factors; see stability/bound.py) beside the norm-based bounds, all without their
    log factors. Returns the axes."""
    plt = _pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    keys = [k for k in BOUND_LABELS if k in bound["log10"]]
    values = [math.nan if bound["log10"][k] is None else bound["log10"][k] for k in keys]
    # an infinite capacity (e.g. c = inf: some sample's activation is all zero) is drawn as an empty bar
    bars = ax.bar(range(len(keys)), [v if math.isfinite(v) else 0.0 for v in values],
                  color=["C3" if k.startswith("ours") else "C7" if k == "parameters" else "C0" for k in keys])
    unverified = bound.get("unverified", {})
    for key, bar, v in zip(keys, bars, values):
        label = f"10^{v:.1f}" if math.isfinite(v) else "undefined" if math.isnan(v) else "infinite"
        if key in unverified:  # a form not checked against its paper: hatched and said on the bar
            bar.set_hatch("//")
            bar.set_alpha(0.5)
            label += "\nunverified"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([BOUND_LABELS[k] for k in keys], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("log10 effective number of parameters")
    ax.set_title(f"capacity terms (log factors dropped), margin gamma = {_gamma_text(bound['gamma'])}")
    return _finish(fig, ax, path)


def plot_cushions(report, ax=None, path=None):
    """Layer cushion mu_i per layer: min, median and max over the data, with mu_{i->}'s median. Returns the axes."""
    plt = _pyplot()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4))
    names = report.layers
    x = np.arange(len(names))
    for key, label, style in (("layer_cushion", "layer cushion mu_i", "o-"),
                              ("interlayer_cushion", "interlayer cushion mu_{i->}", "s--")):
        d = report.to_dict()[key]
        med = [d[n]["median"] for n in names]
        lo = [d[n]["min"] for n in names]
        hi = [d[n]["max"] for n in names]
        ax.plot(x, med, style, label=f"{label} (median; bars: min-max)")
        ax.vlines(x, lo, hi, alpha=0.5)
    ax.set_yscale("log")
    layer_ticks(ax, list(names))
    ax.legend(fontsize=7)
    ax.set_title("cushions over the data")
    return _finish(fig, ax, path)


def plot_report(report, folder=None) -> dict:
    """Every figure of a StabilityReport: attenuation, cushions and bounds, one matplotlib figure each,
    sized for the number of layers. With `folder`, each is saved there as <name>.png (and closed); returns
    {name: figure}, or {name: file path} when saved."""
    plt = _pyplot()
    width = min(7 + 0.25 * len(report.layers), 24)
    drawn = {}
    for name, size, draw in (("attenuation", (width, 4.5), lambda ax: plot_attenuation(report.attenuation, ax=ax)),
                             ("cushions", (width, 4), lambda ax: plot_cushions(report, ax=ax)),
                             ("bounds", (7, 4.5), lambda ax: plot_bounds(report.bound, ax=ax))):
        fig, ax = plt.subplots(figsize=size)
        draw(ax)
        fig.tight_layout()
        if folder is None:
            drawn[name] = fig
        else:
            drawn[name] = f"{folder}/{name}.png"
            fig.savefig(drawn[name], dpi=120)
            plt.close(fig)
    return drawn
