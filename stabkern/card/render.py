"""Writing a card: card.md + card.json + PNGs in one folder, all or nothing; the terminal summary.

`write_card(card, folder)` builds the folder under a temporary name beside it and renames it into
place, so an interrupted or failed write leaves the previous card (or nothing), never half a card.
Not the computation (build.py).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import tempfile

from ..stability.report import measure_rows
from ..tables import csv_text
from . import figures


def _g(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2g}%"


def _holds(h) -> str:
    """A bound's hypotheses in words: the verdict, then the checks (bound.hypotheses)."""
    if h is None:
        return ""
    verdict = {True: "hold", False: "FAIL", None: "not all checked"}[h["holds"]]
    return f"{verdict}: {h['text']}"


def margin_words(gamma) -> str:
    """The margin gamma in words: its value, or why it is undefined (no positive margin quantile)."""
    if gamma is None or (isinstance(gamma, float) and not math.isfinite(gamma)):
        return ("undefined: the chosen quantile of the margins is not positive (too many samples are misclassified "
                "or tied), so every margin-based capacity is undefined; the meters are unaffected")
    return f"{gamma:.3g}"


def headline(doc: dict) -> dict:
    """The few numbers the summary table shows: accuracy, attenuation from the first layer to the
    output, the smallest median layer cushion, and log10 of the capacity terms."""
    m = doc["measure"]
    att = m["attenuation"]["mean"]
    med = [m["layer_cushion"][n]["median"] for n in m["layers"] if m["layer_cushion"][n]["median"] is not None]
    return {"accuracy": doc["data"]["accuracy"], "attenuation_first_to_last": att[0][-1],
            "min_median_cushion": min(med) if med else None,
            "contraction_c": m["activation_contraction"].get("c"),
            "log10": {k: v for k, _, v in figures.bound_items(doc)}}


def _inputs_line(data: dict) -> list:
    """The inputs' size and normalization (written by the command line), as one line and a blank; [] if unknown."""
    norm = data.get("normalization")
    if norm is None:
        return []
    how = "not normalized" if norm["name"] == "none" else (
        f"normalized with {norm['name']} statistics (mean {_floats(norm['mean'])}, std {_floats(norm['std'])})")
    size = data.get("size")
    size = "" if size is None else f"{size[0]}x{size[1]} pixels{' (resized)' if data.get('resized') else ''}, "
    why = {"flags": "as the command line asked", "model": "the statistics the model's loader knows",
           "data": "the data format's published statistics", "data as given": "the data are off the [0, 1] pixel "
           "scale, taken as already normalized", "none": "no statistics known for the model or the data"}
    return [f"Inputs: {size}{how} ({why.get(norm['source'], norm['source'])}).", ""]


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def markdown(doc: dict) -> str:
    """The card as one Markdown page (figures referenced by their file names)."""
    if doc["measure"] is None:  # the data-free card
        return "\n".join(data_free_head(doc) + weights_section(doc) + tail(doc)) + "\n"
    m, h = doc["measure"], headline(doc)
    names = m["layers"]
    att = m["attenuation"]
    acc = "" if h["accuracy"] is None else f", accuracy {h['accuracy']:.1%} on these labels"
    out = [f"# Stability card: {doc['title']}", "",
           f"Model `{doc['model']['name']}` ({doc['model']['parameters']:,} parameters, {len(names)} metered "
           f"layers) on `{doc['data']['name']}` ({doc['data']['n_samples']} samples of shape "
           f"{tuple(doc['data']['shape'])}{acc}). Format `{doc['format']}`, schema version "
           f"{doc['schema_version']} (stabkern docs/card.md).", ""] + _inputs_line(doc["data"])
    out += ["## Noise attenuation", "",
            f"Gaussian noise with ||eta|| = {att['alpha']:g} ||x|| injected at the input of each layer i, "
            "relative change observed at each later layer j (Arora et al. 2018, Figure 3). Noise injected at "
            f"the first layer reaches the output at {_g(h['attenuation_first_to_last'])} of the output's norm "
            f"({_g(h['attenuation_first_to_last'] / att['alpha'] if h['attenuation_first_to_last'] else None)}"
            " times alpha).", "", f"![attenuation]({doc['figures'].get('attenuation', 'attenuation.png')})", ""]
    if len(names) <= 12:
        out += ["| inject \\ observe | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        out += [f"| {n} | " + " | ".join("" if v is None else _g(v) for v in row) + " |"
                for n, row in zip(names, att["mean"])]
        out.append("")
    out += ["## Cushions and contraction", "",
            "Per sample: layer cushion mu_i = ||A_i x|| / (||A_i||_F ||x||), interlayer cushion mu_{i->}, "
            "activation contraction ||x|| / ||phi(x)||; the bound uses their extremes over the data.", "",
            f"![cushions]({doc['figures'].get('cushions', 'cushions.png')})",
            f"![contraction]({doc['figures'].get('contraction', 'contraction.png')})", "",
            *identity_words(doc),
            "| layer | mu_i min | mu_i median | mu_{i->} min | mu_{i->} median | contraction max |",
            "|---|---|---|---|---|---|"]
    for n in names:
        lc, ic = m["layer_cushion"][n], m["interlayer_cushion"][n]
        ac = m["activation_contraction"].get(n) or {}
        out.append(f"| {n} | {_g(lc['min'])} | {_g(lc['median'])} | {_g(ic['min'])} | {_g(ic['median'])} | "
                   f"{_g(ac.get('max'))} |")
    b = m["bound"]
    rse = b.get("mu_rse")
    if rse:
        out += ["", f"The interlayer cushion is sampled ({rse['probes']} Hutchinson probes per sample): in this run "
                f"the relative standard error of a sample's mu_(i,j) has median {_pct(rse['median'])} (q95 "
                f"{_pct(rse['q95'])}, max {_pct(rse['max'])}). Each sample's 95% interval is mu (1 +- t rse) with "
                f"the Student-t quantile t = {rse['t_quantile']:.3g}; the bound takes the data minimum of the "
                "lower ends."]
    hyp = b.get("hypotheses", {})
    out += ["", "## Capacity terms (log10 effective number of parameters)", "",
            f"Margin gamma = {margin_words(b['gamma'])} (fraction of samples within it: "
            f"{_g(b.get('margin_loss')) if b.get('margin_loss') is not None else 'undefined'}). "
            "The chain bound of Arora et al. 2018 (Theorem 4.1) is the headline; every term drops its log factors. "
            "Beside each "
            "number: whether its hypotheses hold on this net (Theorem 4.1 asks interlayer smoothness rho >= 3d and "
            "compresses each layer at the k its capacity sum assumes; a term above the parameter count is "
            "vacuous).", "",
            f"![bounds]({doc['figures'].get('bounds', 'bounds.png')})", "",
            "| term | log10 | hypotheses on this net |", "|---|---|---|"]
    out += [f"| {label} | {_g(v)} | {_holds(hyp.get(key))} |" for key, label, v in figures.bound_items(doc)]
    labels = {key: label for key, label, _ in figures.bound_items(doc)}
    for key, why in b.get("unverified", {}).items():
        out.append(f"\n{labels.get(key, key)}: {why}.")
    c = doc["compressibility"]
    ck = doc["choose_k"]
    out += ["", f"## Compressibility (Algorithm 1, {c['mode']} mode)", "",
            f"choose_k for eps = {ck['eps']:g}, eta = {ck['eta']:g}: k rule = ceil(16 log(2 N_out / eta) / "
            "(eps^2 nu^2)); a layer whose rule reaches cap (entries one sketch covers) stays dense. Measured "
            f"columns compress each layer alone at k (choose_k's k, or {c['fraction']:g} cap for a dense one) "
            "and compare the relative output error on its own dense input with the cushions' prediction "
            "sqrt(mean(1 + 1/nu^2) / k), an upper estimate of the rms error.", "",
            "| layer | n | cap | mu min | k rule | chosen | k | predicted rms | measured mean | measured q90 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in c["layers"]:
        out.append(f"| {r['name']} | {r['n']} | {r['cap']} | {_g(r['mu_min'])} | "
                   f"{r['k_rule'] if r['k_rule'] is not None else 'inf'} | "
                   f"{r['k_chosen'] if r['k_chosen'] is not None else 'dense'} | {r['k']} | "
                   f"{_g(r['predicted_rms_error'])} | {_g(r['measured_mean_error'])} | {_g(r['measured_q90_error'])} |")
    if doc["accuracy_vs_k"]:
        out += ["", "## Accuracy vs k", "", f"![accuracy vs k]({doc['figures'].get('accuracy_vs_k', '')})", "",
                "| k / cap | stored numbers | ratio | accuracy |", "|---|---|---|---|"]
        out += [f"| {p['fraction']:g} | {p['stored']:,} | {p['ratio']:.2f} | {p['accuracy']:.1%} |"
                for p in doc["accuracy_vs_k"]]
        out += ["", *accuracy_words(doc)]
    out += ["", *weights_section(doc)]
    return "\n".join(out + tail(doc)) + "\n"


def data_free_head(doc: dict) -> list:
    """The data-free card's title, what it is, and what needs data."""
    from ..stability.weights import NEEDS_DATA

    needs = (doc.get("weights") or {}).get("needs_data") or list(NEEDS_DATA)
    return [f"# Stability card: {doc['title']}", "",
            f"Model `{doc['model']['name']}` ({doc['model']['parameters']:,} parameters, {doc['model']['layers']} "
            f"Conv2d/Linear layers), no data: this card shows what the weights alone say. Format `{doc['format']}`, "
            f"schema version {doc['schema_version']} (stabkern docs/card.md).", "",
            "## What needs data", "",
            "Pass `--data DATA` (and labels for the accuracy) for: " + "; ".join(needs) + ".", ""]


def weights_section(doc: dict) -> list:
    """The weights-only section (stability/weights.py): spectra, stable rank, noise ratio, norms, capacities."""
    w = doc.get("weights")
    if not w:
        return []
    ops = ((doc.get("measure") or {}).get("bound") or {}).get("operator_norms") or {}
    out = ["## What the weights alone say", "",
           "Per layer, the weight as a matrix W: a Linear layer's (out, in) weight, a Conv2d's reshaped to (C_out, "
           "C_in/groups kh kw), one row per filter. For a conv layer these are norms of that matrix, not of the "
           "convolution's operator on the whole feature map" + (" (its spectral norm ||A||_2, which needs the input "
           "size, is the measured column beside it)" if ops else " (that needs the input size: pass --data)") +
           ". Stable rank = ||W||_F^2 / ||W||_2^2; noise ratio = ||W||_F / (sqrt(n) ||W||_2), n = the matrix's "
           "input dimension (its columns): Gaussian noise in R^n gains ||W||_F / sqrt(n) on average, the best "
           "input ||W||_2, so a small ratio is a layer that passes signal and damps noise (Arora et al. 2018's "
           "noise stability of one layer).", "",
           f"![weight spectra]({doc['figures'].get('spectra', 'spectra.png')})", "",
           "| layer | matrix | n | spectral | Frobenius | l1 | stable rank | noise ratio |"
           + (" spectral of the conv operator (measured) |" if ops else ""),
           "|---" * (8 + bool(ops)) + "|"]
    for r in w["layers"]:
        op = f" {_g((ops.get(r['name']) or {}).get('spectral'))} |" if ops else ""
        out.append(f"| {r['name']} | {r['matrix'][0]} x {r['matrix'][1]} | {r['n']} | {_g(r['spectral'])} | "
                   f"{_g(r['frobenius'])} | {_g(r['l1'])} | {_g(r['stable_rank'])} | {_g(r['noise_ratio'])} |{op}")
    labels = dict(figures.BOUND_LABELS)
    out += ["", "Capacities that need no data: each norm bound is (the weights' factor) x (data scale / margin)^2; "
            "the weights' factor, log10, on the matrices above (the parameter count: "
            f"10^{math.log10(w['parameters']):.2f}):", "", "| bound | log10 weights' factor |", "|---|---|"]
    out += [f"| {labels.get(k, k)}, weights' factor | {_g(v)} |" for k, v in w["capacities_log10"].items()]
    return out + [""]


def tail(doc: dict) -> list:
    """The per-layer table's pointer, provenance and notes."""
    prov = doc["provenance"]
    table = (doc.get("tables") or {}).get("layers", "layers.csv")
    out = ["## Provenance", "",
            f"Every per-layer number of this card, one row per layer: [{table}]({table}) (docs/card.md lists its "
            "columns).", "",
            f"stabkern {prov['stabkern_version']} (specs {prov['specs']['sign']}, {prov['specs']['noise']}), "
            f"torch {prov['torch']}, python {prov['python']}; seed {prov['seed']}, device {prov['device']}, "
            f"dtype {prov['dtype']}, {prov['data_size']} samples.", "",
            "| stage | wall time (s) |", "|---|---|"]
    out += [f"| {k} | {v:.2f} |" for k, v in prov["wall_time_s"].items()]
    if doc.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return out


def identity_words(doc: dict) -> list:
    """Lines saying where mu_{i->} is the identity term 1/sqrt(h_i) (figures.identity_terms)."""
    ident = figures.identity_terms(doc)
    every = [n for n, t in ident.items() if t["where"] == "all"]
    some = [n for n, t in ident.items() if t["where"] == "some"]
    text = ("mu_{i->} = min over j >= i of mu_{i,j}, and its j = i term is the identity's (J = I): 1/sqrt(h_i), "
            "h_i the size of layer i's output, so mu_{i->} <= 1/sqrt(h_i) and it equals the identity term where "
            "no later layer has a smaller cushion (always at the last layer). ")
    if every:
        text += (f"Here it is the identity term on every sample at {len(every)} of {len(ident)} layers ("
                 + ", ".join(every) + ")")
        text += f" and on some samples at {', '.join(some)}." if some else "."
    elif some:
        text += f"Here it is the identity term on some samples at {', '.join(some)}."
    else:
        text += "Here a later layer is smaller everywhere: no layer's mu_{i->} is the identity term."
    return [text, ""]


def accuracy_words(doc: dict) -> list:
    """What the k = cap point of the accuracy-vs-k curve is, with this card's numbers."""
    full = next((p for p in doc["accuracy_vs_k"] if p["fraction"] == 1.0), None)
    if full is None:
        return []
    dense = doc["data"]["accuracy"]
    outputs = doc["model"].get("outputs")
    chance = f"; chance is {1 / outputs:.1%} (1/{outputs} classes)" if outputs else ""
    return [f"At k / cap = 1 every sketch has as many coefficients as the entries m it covers (cap: a filter's "
            f"entries in filter mode, the layer's in tensor mode), so nothing is saved, but the layer is still a "
            f"random sketch, not the dense weight: A_hat = (1/k) sum_t <A, M_t> M_t with random sign matrices M_t "
            f"is unbiased with E||A_hat - A||_F^2 = (m - 1) ||A||_F^2 / k (Arora et al. 2018, Algorithm 1; the "
            f"compression report's expected_rel_fro_error), so at k = m the expected relative weight error is "
            f"sqrt((m - 1) / m), about 1 (the k sign vectors are not orthogonal: (1/k) S^T S is not the identity)"
            f"{_measured_error(full)}. Its accuracy ({full['accuracy']:.1%} against {_pct1(dense)} dense{chance}) is how "
            "well the net absorbs noise of the weight's own size in every layer at once; choose_k's k per layer "
            "is what keeps the output error within eps.", ""]


def _measured_error(point: dict) -> str:
    errors = [v for v in (point.get("rel_fro_error") or {}).values() if v is not None]
    if not errors:
        return ""
    return f"; measured here: ||A_hat - A||_F / ||A||_F from {min(errors):.2f} to {max(errors):.2f} over the layers"


def _pct1(v) -> str:
    return "undefined" if v is None else f"{v:.1%}"


def check_writable(folder) -> pathlib.Path:
    """Create `folder` if needed and prove a file can be written there (OSError otherwise)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".stabkern-probe-")
    os.close(fd)
    os.unlink(probe)
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path) -> None:
    """Give a file made by mkstemp (private, 0600) the mode an ordinary open() would have (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_umask())


CARD_FILES = ("card.md", "card.json", "layers.csv")  # and the figures, *.png
COMPRESSIBILITY_COLUMNS = ("n", "cap", "nu_min", "k_rule", "k_chosen", "k", "predicted_rms_error",
                           "measured_mean_error", "measured_q90_error")


def layer_rows(doc: dict) -> list:
    """One dict per layer of every per-layer number on the card (layers.csv): the meters (stability.report.
    measure_rows), the compressibility row (k_* and the errors, prefixed "compress_"; n and cap as they are)
    and, when present, the weights-only section (prefixed "weight_"). None where undefined."""
    rows: dict = {}
    if doc.get("measure"):
        rows = {r["layer"]: r for r in measure_rows(doc["measure"])}
    for c in (doc.get("compressibility") or {}).get("layers", []):
        row = rows.setdefault(c["name"], {"layer": c["name"], "type": c["type"]})
        for key in COMPRESSIBILITY_COLUMNS:
            row[key if key in ("n", "cap") else f"compress_{key}"] = c.get(key)
    for w in (doc.get("weights") or {}).get("layers", []):
        row = rows.setdefault(w["name"], {"layer": w["name"], "type": w["type"]})
        row.update({f"weight_{k}": v for k, v in w.items() if k not in ("name", "type", "singular_values")})
    return list(rows.values())


def check_card_folder(folder) -> pathlib.Path:
    """`folder` as a Path if write_card may (re)place it: absent, or a real folder holding only a card's
    files (card.md, card.json, PNGs). ValueError otherwise, before anything is written: a file or a
    symbolic link there (replacing a link would drop it; writing through it would write elsewhere), or
    a folder with other contents, which replacing the card as a whole would delete."""
    folder = pathlib.Path(folder)
    if folder.is_symlink():
        raise ValueError(f"card folder {folder} is a symbolic link: a card is written only into a real folder; "
                         "remove the link or choose another folder (--name)")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"card folder {folder} exists and is not a folder: remove it or choose another "
                         "folder (--name)")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir()
                         if not (p.is_file() and not p.is_symlink() and (p.name in CARD_FILES or p.suffix == ".png")))
        if foreign:
            raise ValueError(f"card folder {folder} holds {len(foreign)} entries that are not a card's (e.g. "
                             f"{foreign[0]!r}); a card replaces its folder as a whole, so choose a new or empty "
                             "folder (--name)")
    return folder


def write_card(card, folder) -> pathlib.Path:
    """Write card.md, card.json and the PNGs into `folder` (replaced as a whole; see check_card_folder for
    what is refused). Returns the folder."""
    folder = check_card_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    old = None
    try:
        card.doc["figures"] = figures.draw_all(card.doc, tmp)
        (tmp / "layers.csv").write_text(csv_text(layer_rows(card.doc)))
        card.doc["tables"] = {"layers": "layers.csv"}
        (tmp / "card.json").write_text(json.dumps(card.doc, indent=1, allow_nan=False))
        (tmp / "card.md").write_text(markdown(card.doc))
        # mkdtemp makes the folder private (0700): give it the mode a plain mkdir would have
        tmp.chmod(0o777 & ~_umask())
        if folder.exists():  # rename() replaces only an empty folder: move the old card aside (a unique name)
            old = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            folder.rename(old)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            old.rename(folder)  # failed after moving the old card aside: put it back
        raise
    finally:
        if old is not None and old.exists():
            shutil.rmtree(old)
    return folder


SUMMARY_COLUMNS = (
    ("card", "the card's name"),
    ("accuracy", "accuracy of the dense model on the card's labels"),
    ("noise at output", "r(first -> out): relative change at the output from noise of norm alpha ||x|| injected "
                        "at the first layer"),
    ("min median mu_i", "the smallest over layers of the median (over samples) layer cushion mu_i"),
    ("c", "activation contraction: the largest ||x|| / ||phi(x)||"),
    ("log10 chain bound", "log10 of the Arora et al. 2018 bound (chain, Theorem 4.1), in effective parameters"),
    ("log10 spectral", "log10 of the spectral bound (Bartlett et al. 2017)"),
    ("log10 params", "log10 of the parameter count"),
)


def summary_table(rows) -> str:
    """Fixed-width terminal table, one row per (name, card doc), with a key saying what each column is."""
    head = [name for name, _ in SUMMARY_COLUMNS]
    lines = []
    for name, doc in rows:
        h = headline(doc)
        lg = h["log10"]
        lines.append([name, "-" if h["accuracy"] is None else f"{h['accuracy']:.1%}", _g(h["attenuation_first_to_last"]),
                      _g(h["min_median_cushion"]), _g(h["contraction_c"]), _g(lg.get("ours")),
                      _g(lg.get("spectral_bartlett2017")), _g(lg.get("parameters"))])
    widths = [max(len(head[i]), *(len(r[i]) for r in lines)) for i in range(len(head))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    key = [f"  {name}: {what}" for name, what in SUMMARY_COLUMNS[1:]]
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines), "columns (- = undefined):", *key])
