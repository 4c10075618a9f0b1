"""Write a study report: study.json (stabkern-study-report-v1), study.md (the τ table and the nets) and
two figures (each measure against the gap; the τ of every measure with its interval). All or nothing per
file: each is written to a temporary name and renamed."""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

from ..card.render import publish_mode


def _publish(tmp: str, final: pathlib.Path) -> None:
    """Rename tmp (mkstemp's, mode 0600) to final with a plain file's mode; a reader sees the old or the new."""
    publish_mode(tmp)
    os.replace(tmp, final)


def write_text(path: pathlib.Path, text: str) -> None:
    """`text` written to `path` whole or not at all (a temporary name in the same folder, then a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _publish(tmp, path)


def _fmt(v, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _interval(d: dict) -> str:
    if d["low"] is None:
        return f"{_fmt(d['value'])} (n/a, {d['units']})"
    return f"{_fmt(d['value'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]"


def markdown(report: dict) -> str:
    """The study as Markdown: how τ reads, the τ table, then one line per net."""
    ranking = report["ranking"]
    axes = sorted({a for r in ranking.values() for a in r["granulated"]})
    lines = [
        "# Study: does each measure rank the nets by their generalization gap?",
        "",
        "gap = training accuracy - test accuracy. τ: Kendall's τ-b of the measure against the gap over every "
        "net where the measure is defined, with a 95% BCa bootstrap interval over the nets. ψ(axis): Jiang et "
        "al.'s granulated τ (τ inside each group of nets that differ only along that axis, averaged; in "
        "brackets a 95% Student-t interval over the groups, given from 10 groups on; otherwise the group "
        "count). Ψ: the mean of the ψ. Expected: the sign the theory predicts (+: a larger value, a larger "
        "gap). A measure ranks well when sign × τ is near 1.",
        "",
        "| measure | expected | τ [95%] | nets | " + " | ".join(f"ψ({a})" for a in axes) + " | Ψ |",
        "|---|---|---|---|" + "---|" * len(axes) + "---|",
    ]
    for name, r in ranking.items():
        cells = [_interval(r["granulated"][a]) if a in r["granulated"] else "n/a" for a in axes]
        lines.append(f"| {name} | {'+' if r['expected_sign'] > 0 else '-'} | {_interval(r['tau'])} | "
                     f"{r['defined_nets']} | " + " | ".join(cells) + f" | {_fmt(r['psi'])} |")
    lines += ["", "## Nets", "", "| net | hyperparameters | train acc | test acc | gap | error |",
              "|---|---|---|---|---|---|"]
    for n in report["nets"]:
        hp = ", ".join(f"{k}={v}" for k, v in n["hyperparameters"].items())
        if n.get("error"):
            lines.append(f"| {n['name']} | {hp} | | | | {n['error'].splitlines()[0]} |")
        else:
            lines.append(f"| {n['name']} | {hp} | {_fmt(n['train_accuracy'], 3)} | {_fmt(n['test_accuracy'], 3)} | "
                         f"{_fmt(n['gap'], 3)} | |")
    return "\n".join(lines) + "\n"


def figures(report: dict, folder: pathlib.Path) -> list[str]:
    """measures_vs_gap.png and tau.png in `folder`; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [n for n in report["nets"] if not n.get("error")]
    names = list(report["ranking"])
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = [(n["measures"][name], n["gap"]) for n in done if n["measures"].get(name) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14)
        tau = report["ranking"][name]["tau"]["value"]
        ax.set_title(f"{name}\nτ = {_fmt(tau)}", fontsize=8)
        ax.set_ylabel("gap", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    written = []
    for file, figure in (("measures_vs_gap.png", fig), ("tau.png", _tau_figure(plt, report))):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".png")
        os.close(fd)
        figure.savefig(tmp, dpi=110)
        plt.close(figure)
        _publish(tmp, folder / file)
        written.append(file)
    return written


def _tau_figure(plt, report: dict):
    ranking = report["ranking"]
    names = list(ranking)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    for y, name in enumerate(names):
        t = ranking[name]["tau"]
        if t["value"] is None:
            continue
        signed = ranking[name]["expected_sign"]
        if t["low"] is not None:
            ax.plot([signed * t["low"], signed * t["high"]], [y, y], color="tab:blue")
        ax.plot([signed * t["value"]], [y], "o", color="tab:blue")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("expected sign × Kendall τ with the gap (95% interval)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def write_study(report: dict, folder: pathlib.Path) -> None:
    """study.json, study.md and the figures of `report` in `folder` (created if absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in (("study.json", json.dumps(report, indent=1)), ("study.md", markdown(report))):
        write_text(folder / file, text)
    figures(report, folder)
