"""The card's PNG figures, drawn from the card's JSON dict (so a saved card can be redrawn).

attenuation (one curve per injection layer, Arora et al. 2018 Figure 3), cushions and contraction
(per-layer distributions over the data as box plots: whiskers q05-q95, box q25-q75, line median), bounds
(log10 capacity terms, Figure 4) and accuracy vs k. With many layers (a DenseNet has 120) the legend
gives way to a colorbar and the layer tick labels are thinned, so the curves stay visible. Not the
meters' own plots (stabkern/stability/plots.py).
"""

from __future__ import annotations

import math

import numpy as np

from ..stability.plots import BOUND_LABELS, MAX_LEGEND, layer_ticks


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window from the CLI
    import matplotlib.pyplot as plt
    return plt


def attenuation(doc: dict, ax):
    """Mean r[i, j] over observation layers j >= i for every injection layer i, log-scale y."""
    import matplotlib as mpl

    att = doc["measure"]["attenuation"]
    names = att["layers"]
    mean = np.array([[math.nan if v is None else v for v in row] for row in att["mean"]], dtype=float)
    num = len(names)
    cmap = mpl.colormaps["viridis"]
    for i in range(num):
        j = np.arange(i, num)
        ax.plot(j, mean[i, i:], marker="o" if num <= MAX_LEGEND else None, ms=3, lw=1,
                color=cmap(0.9 * i / max(num - 1, 1)), label=names[i])
    ax.set_yscale("log")
    layer_ticks(ax, names)
    ax.set_xlabel("observation layer j")
    ax.set_ylabel("||x_hat^j - x^j|| / ||x^j||")
    ax.set_title(f"noise attenuation (alpha = {att['alpha']:g}, {att['trials']} trials, {att['n_samples']} samples)")
    if num <= MAX_LEGEND:
        ax.legend(fontsize=6, title="injected at", title_fontsize=7)
    else:
        sm = mpl.cm.ScalarMappable(cmap=cmap, norm=mpl.colors.Normalize(0, (num - 1) / 0.9))
        ax.figure.colorbar(sm, ax=ax, label="injection layer index")


def _boxes(ax, per_layer: dict, names, title, ylabel):
    stats = []
    for name in names:
        d = per_layer.get(name)
        if not d or d.get("n", 0) == 0 or d.get("median") is None:
            continue
        stats.append({"label": name, "med": d["median"], "q1": d["q25"], "q3": d["q75"], "whislo": d["q05"],
                      "whishi": d["q95"], "fliers": [d["min"], d["max"]]})
    if stats:
        ax.bxp(stats, positions=range(len(stats)), showfliers=True, flierprops={"marker": "_", "markersize": 6})
        layer_ticks(ax, [s["label"] for s in stats])
    ax.set_title(title)
    ax.set_ylabel(ylabel)


def cushions(doc: dict, axes):
    """Layer cushion and interlayer cushion per layer (two axes)."""
    m = doc["measure"]
    _boxes(axes[0], m["layer_cushion"], m["layers"], "layer cushion mu_i per sample", "mu_i")
    _boxes(axes[1], m["interlayer_cushion"], m["layers"], "interlayer cushion mu_{i->} per sample", "mu_{i->}")


def contraction(doc: dict, ax):
    """Activation contraction per layer (the paper's c is the largest)."""
    m = doc["measure"]
    per_layer = {k: v for k, v in m["activation_contraction"].items() if isinstance(v, dict)}
    c = m["activation_contraction"].get("c")
    _boxes(ax, per_layer, m["layers"], f"activation contraction per sample (c = {c:.3g})" if c else
           "activation contraction per sample", "||x|| / ||phi(x)||")


def bound_items(doc: dict) -> list:
    """(key, label, log10 value) of every capacity term in the report: ours (the chain bound, the headline)
    first, then the conv bound (labelled unverified), any other, the parameter count and the norm bounds."""
    logs = doc["measure"]["bound"]["log10"]
    order = ["ours", "ours_conv"] + sorted(k for k in logs if k not in BOUND_LABELS) + \
        [k for k in BOUND_LABELS if k not in ("ours", "ours_conv")]
    unverified = doc["measure"]["bound"].get("unverified", {})
    return [(k, BOUND_LABELS.get(k, k.replace("_", " ") + (" (UNVERIFIED)" if k in unverified else "")), logs[k])
            for k in order if k in logs]


def bounds(doc: dict, ax):
    """Bar chart of log10 effective numbers of parameters; an infinite or undefined term is an empty bar."""
    items = bound_items(doc)
    values = [v for _, _, v in items]
    finite = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
    colors = ["C3" if k == "ours" else "C1" if k == "ours_conv" or k not in BOUND_LABELS else
              "C7" if k == "parameters" else "C0" for k, _, _ in items]
    bars = ax.bar(range(len(items)), finite, color=colors)
    unverified = doc["measure"]["bound"].get("unverified", {})
    for (key, _, _), bar, v in zip(items, bars, values):
        text = f"10^{v:.1f}" if v is not None and math.isfinite(v) else "undefined"
        if key in unverified:  # a form not checked against its paper: hatched and said on the bar
            bar.set_hatch("//")
            bar.set_alpha(0.5)
            text += "\nunverified"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([label for _, label, _ in items], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("log10 effective number of parameters")
    gamma = doc["measure"]["bound"]["gamma"]
    ax.set_title("capacity terms, margin gamma = " + ("undefined" if gamma is None else f"{gamma:.3g}"))


def accuracy_vs_k(doc: dict, ax):
    """Accuracy of the compressed model against its compression ratio, dense accuracy dashed."""
    curve = doc["accuracy_vs_k"]
    ax.plot([p["ratio"] for p in curve], [p["accuracy"] for p in curve], "o-", label="compressed (every layer)")
    for p in curve:
        ax.annotate(f"k = {p['fraction']:g} cap", (p["ratio"], p["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    if doc["data"]["accuracy"] is not None:
        ax.axhline(doc["data"]["accuracy"], ls="--", color="gray", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (weights / stored numbers)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"accuracy vs k ({doc['compressibility']['mode']} mode)")
    ax.legend(fontsize=7)


def draw_all(doc: dict, folder) -> dict:
    """Write every figure of `doc` as PNG into `folder`; returns {figure: file name}."""
    plt = _pyplot()
    num = len(doc["measure"]["layers"])
    width = min(6 + 0.25 * num, 24)
    plans = [("attenuation", (width, 4.5), 1, attenuation), ("cushions", (width, 7), 2, cushions),
             ("contraction", (width, 4), 1, contraction), ("bounds", (7, 4.5), 1, bounds)]
    if doc["accuracy_vs_k"]:
        plans.append(("accuracy_vs_k", (6, 4), 1, accuracy_vs_k))
    names = {}
    for key, size, rows, draw in plans:
        fig, axes = plt.subplots(rows, 1, figsize=size)
        draw(doc, axes)
        fig.tight_layout()
        names[key] = f"{key}.png"
        fig.savefig(f"{folder}/{key}.png", dpi=110)
        plt.close(fig)
    return names
