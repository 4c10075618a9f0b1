"""The card's PNG figures, drawn from the card's JSON dict (so a saved card can be redrawn).

attenuation (one curve per injection layer, Arora et al. 2018 Figure 3), cushions and contraction
(per-layer distributions over the data as box plots: whiskers q05-q95, box q25-q75, line median), bounds
(log10 capacity terms, Figure 4), accuracy vs k and the weight spectra (the data-free section). With many
layers (a DenseNet has 120) the legend gives way to a colorbar and the layer tick labels are thinned, so
the curves stay visible. Not the meters' own plots (stabkern/stability/plots.py).
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


def log_ticks(ax):
    """Enough labelled ticks on a log y axis: 1, 2 and 5 per decade (thinned to at most 12 by the locator),
    written as plain numbers (0.05), so a curve that spans less than a decade still has numbers beside it."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) / 1.0, numticks=12))
    ax.yaxis.set_minor_formatter(NullFormatter())


def attenuation(doc: dict, ax):
    """Mean r[i, j] over observation layers j >= i for every injection layer i, log-scale y, with the
    report's 95% interval of the mean (ci_low, ci_high) as a band and the injected level alpha dashed: a
    curve below the line means the noise shrank on its way up."""
    import matplotlib as mpl

    att = doc["measure"]["attenuation"]
    names = att["layers"]

    def matrix(key):
        return np.array([[math.nan if v is None else v for v in row] for row in att[key]], dtype=float)

    mean, low, high = matrix("mean"), matrix("ci_low"), matrix("ci_high")
    num = len(names)
    cmap = mpl.colormaps["viridis"]
    for i in range(num):
        j = np.arange(i, num)
        color = cmap(0.9 * i / max(num - 1, 1))
        ax.plot(j, mean[i, i:], marker="o" if num <= MAX_LEGEND else None, ms=3, lw=1, color=color, label=names[i])
        lo, hi = low[i, i:], high[i, i:]
        band = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(mean[i, i:])
        # a log axis has no zero: where the interval reaches 0 only its upper half is drawn
        ax.fill_between(j[band], np.where(lo > 0, lo, mean[i, i:])[band], hi[band], color=color, alpha=0.15,
                        linewidth=0)
    ax.axhline(att["alpha"], ls="--", lw=1, color="black", label=f"injected level alpha = {att['alpha']:g}")
    ax.set_yscale("log")
    log_ticks(ax)
    layer_ticks(ax, names)
    ax.set_xlabel("observation layer j")
    ax.set_ylabel("||x_hat^j - x^j|| / ||x^j||")
    ax.set_title(f"noise attenuation (alpha = {att['alpha']:g}, {att['trials']} trials, {att['n_samples']} samples)")
    band = mpl.patches.Patch(color="gray", alpha=0.3, label="95% interval of the mean")
    if num <= MAX_LEGEND:
        ax.legend(handles=ax.get_lines() + [band], fontsize=6, title="injected at", title_fontsize=7)
    else:  # a legend of 100+ curves would cover them: colors by injection index, the legend keeps the references
        sm = mpl.cm.ScalarMappable(cmap=cmap, norm=mpl.colors.Normalize(0, (num - 1) / 0.9))
        ax.figure.colorbar(sm, ax=ax, label="injection layer index")
        ax.legend(handles=ax.get_lines()[-1:] + [band], fontsize=6)


def _boxes(ax, per_layer: dict, names, title, ylabel) -> list:
    """Box plots of the per-layer distributions; returns the names drawn, in their x positions."""
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
    return [s["label"] for s in stats]


def identity_terms(doc: dict) -> dict:
    """Per layer i: {"value": 1/sqrt(h_i), "where": "all" | "some" | "none"}. mu_{i->}(x) = min_{j >= i}
    mu_{i,j}(x) and its j = i term is the identity's, J^{i,i} = I: ||x|| / (||I||_F ||x||) = 1/sqrt(h_i)
    (h_i = dim x^i; stability/meters.py), so mu_{i->}(x) <= 1/sqrt(h_i) always, with equality when no
    later layer's mu_{i,j}(x) is smaller (always at the last layer). "all": every sample's mu_{i->} is the
    identity term (its data minimum reaches 1/sqrt(h_i)); "some": the largest does; "none" otherwise."""
    out = {}
    for name, d in doc["measure"]["interlayer_cushion"].items():
        own = (d.get("to") or {}).get(name) or {}
        value = own.get("min")
        if value is None or d.get("min") is None:
            continue
        tol = 1e-6 * value  # mu_{i,i} is 1/sqrt(h_i) computed once; the min over j returns that same number
        where = "all" if d["min"] >= value - tol else "some" if d["max"] >= value - tol else "none"
        out[name] = {"value": value, "where": where}
    return out


def cushions(doc: dict, axes):
    """Layer cushion and interlayer cushion per layer (two axes); on the second, the identity term
    1/sqrt(h_i) of each layer (x), the value mu_{i->} takes where no later layer has a smaller cushion."""
    m = doc["measure"]
    _boxes(axes[0], m["layer_cushion"], m["layers"], "layer cushion mu_i per sample", "mu_i")
    shown = _boxes(axes[1], m["interlayer_cushion"], m["layers"],
                   "interlayer cushion mu_{i->} = min over j >= i of mu_{i,j}, per sample", "mu_{i->}")
    ident = identity_terms(doc)
    at = [(p, ident[n]) for p, n in enumerate(shown) if n in ident]
    if at:
        axes[1].plot([p for p, _ in at], [t["value"] for _, t in at], "x", color="C3", ms=7,
                     label="identity term 1/sqrt(h_i) (j = i: J = I)")
        everywhere = [n for n in shown if ident.get(n, {}).get("where") == "all"]
        what = ("no later layer is smaller: every sample's mu_{i->} is the identity term at " +
                ("every layer" if len(everywhere) == len(shown) else f"{len(everywhere)} of {len(shown)} layers")
                if everywhere else "x: the identity term, mu_{i->}'s value where no later layer is smaller")
        axes[1].set_title(f"interlayer cushion mu_{{i->}} = min over j >= i of mu_{{i,j}}, per sample\n{what}",
                          fontsize=10)
        axes[1].legend(fontsize=7, loc="best")


def contraction(doc: dict, ax):
    """Activation contraction per layer (the paper's c is the largest)."""
    m = doc["measure"]
    per_layer = {k: v for k, v in m["activation_contraction"].items() if isinstance(v, dict)}
    c = m["activation_contraction"].get("c")
    _boxes(ax, per_layer, m["layers"], f"activation contraction per sample (c = {c:.3g})" if c else
           "activation contraction per sample", "||x|| / ||phi(x)||")


def bound_items(doc: dict) -> list:
    """(key, label, log10 value) of every capacity term in the report: the chain bound (key "ours", the headline)
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
    """Accuracy of the compressed model against its compression ratio; dense accuracy dashed, chance
    (1 / the model's output count) dotted, and the k = cap point (no saving) marked: there the sketch is
    not the dense weight (its expected relative error is sqrt((m - 1) / m), about 1; see render.py)."""
    curve = doc["accuracy_vs_k"]
    ax.plot([p["ratio"] for p in curve], [p["accuracy"] for p in curve], "o-", label="compressed (every layer)")
    for p in curve:
        ax.annotate(f"k = {p['fraction']:g} cap", (p["ratio"], p["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    full = [p for p in curve if p["fraction"] == 1.0]
    if full:
        ax.plot([p["ratio"] for p in full], [p["accuracy"] for p in full], "s", ms=9, mfc="none", color="C3",
                label="k = cap: no saving, still a random sketch (weight error ~ sqrt((m-1)/m))")
    if doc["data"]["accuracy"] is not None:
        ax.axhline(doc["data"]["accuracy"], ls="--", color="gray", label="dense")
    outputs = doc["model"].get("outputs")
    if outputs:
        ax.axhline(1 / outputs, ls=":", color="black", label=f"chance (1/{outputs} classes)")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (weights / stored numbers)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"accuracy vs k ({doc['compressibility']['mode']} mode)")
    ax.legend(fontsize=6, loc="best")


def spectra(doc: dict, ax):
    """Each layer's singular values (of its weight matrix, stability/weights.py), sorted, log-scale y,
    against their rank divided by the count, so layers of different sizes share the axis."""
    import matplotlib as mpl

    rows = doc["weights"]["layers"]
    num = len(rows)
    cmap = mpl.colormaps["viridis"]
    for i, r in enumerate(rows):
        s = np.array([math.nan if v is None else v for v in r["singular_values"]], dtype=float)
        shown = np.isfinite(s) & (s > 0)  # a log axis has no zero: exact zeros are left out
        rank = (np.arange(len(s)) + 1) / len(s)
        ax.plot(rank[shown], s[shown], lw=1, marker="." if len(s) <= 64 else None, ms=3,
                color=cmap(0.9 * i / max(num - 1, 1)), label=f"{r['name']} ({r['matrix'][0]}x{r['matrix'][1]})")
    ax.set_yscale("log")
    log_ticks(ax)
    ax.set_xlabel("rank / number of singular values")
    ax.set_ylabel("singular value of W")
    ax.set_title("weight spectra (conv: the (C_out, C_in kh kw) matrix), largest first")
    if num <= MAX_LEGEND:
        ax.legend(fontsize=6)
    else:
        sm = mpl.cm.ScalarMappable(cmap=cmap, norm=mpl.colors.Normalize(0, (num - 1) / 0.9))
        ax.figure.colorbar(sm, ax=ax, label="layer index")


def draw_all(doc: dict, folder) -> dict:
    """Write every figure of `doc` as PNG into `folder`; returns {figure: file name}. A data-free card
    (measure null) has the weight spectra only."""
    plt = _pyplot()
    plans = []
    if doc.get("measure"):
        num = len(doc["measure"]["layers"])
        width = min(6 + 0.25 * num, 24)
        plans += [("attenuation", (width, 4.5), 1, attenuation), ("cushions", (width, 7), 2, cushions),
                  ("contraction", (width, 4), 1, contraction), ("bounds", (7, 4.5), 1, bounds)]
    if doc.get("accuracy_vs_k"):
        plans.append(("accuracy_vs_k", (6, 4), 1, accuracy_vs_k))
    if doc.get("weights"):
        plans.append(("spectra", (7, 4.5), 1, spectra))
    names = {}
    for key, size, rows, draw in plans:
        fig, axes = plt.subplots(rows, 1, figsize=size)
        draw(doc, axes)
        fig.tight_layout()
        names[key] = f"{key}.png"
        fig.savefig(f"{folder}/{key}.png", dpi=110)
        plt.close(fig)
    return names
