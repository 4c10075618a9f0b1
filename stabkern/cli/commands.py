"""What each `stabkern` subcommand does (main.py parses; inputs.py loads and checks the inputs).

Every command validates all of its inputs and the --out folder before long work starts, shows progress
through `stabkern.progress.bars` (tqdm on a terminal's stderr unless --quiet), and writes its files as
one set (outputs.py: all written under temporary names, then renamed into place together).
Human-readable text goes to stdout, or with --json one JSON document.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from .inputs import (CLIError, card_folder, check_fit, device, load_data, load_model, normalization_flags,
                     out_folder, size_flag, sweep_flag)
from .outputs import json_writer, write_set
from .study import cmd_study  # noqa: F401 - run() dispatches to cmd_<command>


def run(args) -> None:
    from .. import _checks

    try:
        args.seed = _checks.check_seed(args.seed)
        for name in ("limit", "batch_size", "trials", "k", "samples", "probes"):
            if getattr(args, name, None) is not None:
                _checks.check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    except (TypeError, ValueError) as err:
        raise CLIError(f"{err}; fix the option's value") from err
    globals()[f"cmd_{args.command}"](args)


def _progress(args):
    from ..progress import bars

    return bars(quiet=args.quiet or args.json)


def _emit(args, doc: dict, text: str) -> None:
    print(json.dumps(doc, indent=1, allow_nan=False) if args.json else text)


def _inputs(args):
    """(device, out folder or None, Model, Data or None without --data): everything checked before the work
    starts."""
    dev = device(args.device)
    out = out_folder(args.out) if args.out else None
    normalization = normalization_flags(args.normalize, args.mean, args.std)
    size = size_flag(args.size)
    m = load_model(args.model, num_classes=args.num_classes, trust_pickle=args.trust_pickle, dev=dev)
    if args.data is None:  # the card's data-free form (the other commands require --data)
        return dev, out, m, None
    d = load_data(args.data, limit=args.limit, trust_pickle=args.trust_pickle, seed=args.seed,
                  normalization=normalization, size=size, model=m, flag=args.normalize)
    check_fit(m, d, dev)
    return dev, out, m, d


def _layers(args, m) -> list[str] | None:
    """--layers NAMES: the Conv2d / Linear names it matches (exact or glob), None without it."""
    from ..stability.layers import match_layers

    if args.layers is None:
        return None
    try:
        return match_layers(m.model, args.layers.split(","))
    except ValueError as err:
        raise CLIError(f"--layers {args.layers}: {err}") from err


def _library_errors(fn, *a, **kw):
    """Run a library call; its argument errors (ValueError) and non-finite values the model computes on
    the data (FloatingPointError: finite weights and inputs that overflow) become CLIError: one line, exit 2."""
    try:
        return fn(*a, **kw)
    except ValueError as err:
        raise CLIError(str(err)) from err
    except FloatingPointError as err:
        raise CLIError(f"{err}: the model overflows on this data; check the data's scale (normalization)") from err


def cmd_info(args) -> None:
    from .. import __version__
    from ..backends import BACKENDS
    from ..info import report
    from ..spec import SPEC

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    usable = {dev: {name: (b.missing() or b.refuses(torch.device(dev), torch.float32)) for name, b in BACKENDS.items()}
              for dev in devices}
    doc = {"stabkern_version": __version__, "spec": SPEC, "torch": torch.__version__,
           "cuda": torch.cuda.is_available(), "backends": usable}
    _emit(args, doc, report())


def cmd_bench(args) -> None:
    from .. import sign_project, sign_reconstruct
    from ..ops import select_backend

    dev = device(args.device)
    gen = torch.Generator().manual_seed(0)
    fan_in = 1
    for s in args.shape[1:]:
        fan_in *= s
    A = (torch.randn(*args.shape, generator=gen) * (2.0 / fan_in) ** 0.5).to(dev)
    n, k = A.numel(), args.k
    backend = _library_errors(select_backend, args.backend, A.device, A.dtype).name
    sign_project(A.reshape(-1)[:128], 1, seed=args.seed, backend=args.backend)  # warm-up: torch's first-call setup

    def timed(fn):
        if A.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if A.is_cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    y, t_proj = timed(lambda: sign_project(A.reshape(-1), k, seed=args.seed, backend=args.backend))
    A_hat, t_rec = timed(lambda: sign_reconstruct(y, n, seed=args.seed, backend=args.backend).reshape(A.shape))
    ratio = ((A_hat - A).norm() ** 2 / A.norm() ** 2).item()
    doc = {"shape": list(args.shape), "n": n, "k": k, "backend": backend, "device": str(dev),
           "project_s": t_proj, "reconstruct_s": t_rec, "project_gmac_s": n * k / t_proj / 1e9,
           "reconstruct_gmac_s": n * k / t_rec / 1e9, "rel_sq_error": ratio, "expected_rel_sq_error": (n - 1) / k}
    _emit(args, doc, "\n".join([
        f"layer weight {tuple(args.shape)}: n = {n:,}, k = {k:,}, backend '{backend}' on {dev}",
        f"projection      {t_proj * 1e3:9.1f} ms  {doc['project_gmac_s']:8.2f} G sign-MAC/s",
        f"reconstruction  {t_rec * 1e3:9.1f} ms  {doc['reconstruct_gmac_s']:8.2f} G sign-MAC/s",
        f"stored: {k:,} coefficients + seed instead of {n:,} weights ({n / k:.0f}x smaller)",
        f"||A_hat - A||^2 / ||A||^2 = {ratio:.2f}   (expected (n - 1) / k = {(n - 1) / k:.2f})"]))


def cmd_meter(args) -> None:
    from .. import measure
    from ..card.build import summarized_warnings
    from ..stability.plots import BOUND_LABELS

    dev, out, m, d = _inputs(args)
    layers = _layers(args, m)
    progress = _progress(args)
    notes: list = list(d.notes)
    with summarized_warnings(notes):
        report = _library_errors(measure, m.model, d.x, d.y, alpha=args.alpha, trials=args.trials, seed=args.seed,
                                 margin_quantile=args.margin_quantile, layers=layers, progress=progress)
    doc = {**report.to_dict(), "data": {"name": d.name, **d.info, "notes": notes}}
    _print_notes(args, notes)
    if out is not None:
        write_set(out, {"measure.json": json_writer(doc)})
    logs = doc["bound"]["log10"]
    _emit(args, doc, "\n".join([f"{m.name} on {d.name} ({len(d.x)} samples): noise attenuation (rows: injection)",
                                report.attenuation.table(),
                                "log10 capacity: " + ", ".join(f"{BOUND_LABELS.get(k, k)} {v:.2f}" for k, v in logs.items()
                                                               if v is not None)]))


def cmd_compress(args) -> None:
    from .. import choose_k, save_compressed
    from ..card.build import compress_layer_by_layer, summarized_warnings
    from ..schemas import tagged

    dev, out, m, d = _inputs(args)
    layers = _layers(args, m)
    progress = _progress(args)
    notes: list = list(d.notes)
    chosen = None
    with summarized_warnings(notes):
        if args.eps is not None:
            progress("choose_k", 0, 1)
            chosen = _library_errors(choose_k, m.model, d.x, args.eps, mode=args.mode, seed=args.seed, check=False,
                                     batch_size=args.batch_size, layers=layers)
            progress("choose_k", 1, 1)
            ks = chosen.k
        else:
            from ..compress import sketchable_layers
            ks = {name: args.k for _, name, _ in sketchable_layers(m.model) if layers is None or name in layers}
        small, report = _library_errors(compress_layer_by_layer, m.model, ks, mode=args.mode, seed=args.seed,
                                        data=d.x, eps=args.eps, batch_size=args.batch_size, progress=progress)
    _print_notes(args, notes)
    data = {"name": d.name, **d.info, "notes": notes}
    doc = {"compression": {**report.to_dict(), "data": data},
           "choose_k": None if chosen is None else tagged(chosen.to_dict(), "stabkern-choose-k-v1"), "data": data}
    if out is not None:  # one set: choose_k.json of an earlier --eps run does not stay beside a --k run's files
        files = {"compression.json": json_writer(doc["compression"]),
                 "compressed.pt": lambda path: save_compressed(small, path, architecture=m.architecture)}
        if chosen is not None:
            files["choose_k.json"] = json_writer(doc["choose_k"])
        write_set(out, files, remove=[] if chosen is not None else ["choose_k.json"])
    _emit(args, doc, ("" if chosen is None else f"{chosen}\n\n") + str(report))


def _print_estimate(args, estimate: dict) -> None:
    """The card's estimated seconds per stage, on stderr before the work starts (not with --quiet)."""
    if args.quiet:
        return
    parts = ", ".join(f"{stage} {_duration(s)}" for stage, s in estimate.items())
    print(f"estimated cost: {parts}; about {_duration(sum(estimate.values()))} in all", file=sys.stderr)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _print_notes(args, notes) -> None:
    if not args.quiet:
        for n in notes:
            print(f"note: {n}", file=sys.stderr)


def cmd_card(args) -> None:
    from ..card import build_card, write_card
    from ..card.build import FRACTIONS

    fractions = sweep_flag(args.sweep)
    if args.data is None:  # the data-free card: what the weights alone say
        given = [flag for flag, value in (("--limit", args.limit), ("--normalize", args.normalize),
                                          ("--mean", args.mean), ("--std", args.std), ("--size", args.size),
                                          ("--sweep", args.sweep)) if value is not None]
        if given:
            raise CLIError(f"{', '.join(given)} describe the data, and no --data was given: pass --data DATA, or "
                           "leave them out for the weights-only card")
    dev, out, m, d = _inputs(args)
    out = out or out_folder(".")
    name = args.name or "".join(c if c.isalnum() or c in "-_." else "-" for c in m.name.rsplit("/", 1)[-1])
    folder = card_folder(out, name)
    card = _library_errors(build_card, m.model, None if d is None else d.x, None if d is None else d.y,
                           title=f"{m.name} on {d.name}" if d else f"{m.name} (weights only, no data)",
                           model_name=m.name, data_name=d.name if d else "none", seed=args.seed, eps=args.eps,
                           mode=args.mode, trials=args.trials,
                           margin_quantile=args.margin_quantile, batch_size=args.batch_size,
                           fractions=FRACTIONS if fractions is None else fractions, layers=_layers(args, m),
                           progress=_progress(args), on_estimate=lambda estimate: _print_estimate(args, estimate))
    data_notes = [] if d is None else d.notes
    if d is not None:
        card.doc["data"].update(d.info)
        card.doc["notes"] = data_notes + card.doc["notes"]
    _print_notes(args, data_notes + card.notes)
    folder = _library_errors(write_card, card, folder)  # ValueError: OUT/NAME changed while the card was built
    _emit(args, card.doc, f"wrote {folder}/card.md, card.json and {len(card.doc['figures'])} figures")


def cmd_demo(args) -> None:
    from ..card import build_card, summary_table, write_card
    from ..card.build import FRACTIONS
    from ..zoo.digits import trained_digits_net, training_set

    dev = device(args.device)
    out = out_folder(args.out or "stabkern-demo")
    for name in ("digits", "digits-shuffled"):
        card_folder(out, name)
    progress = _progress(args)
    limit = 128 if args.quick else 512
    kw = {"seed": args.seed, "trials": 2 if args.quick else 8,
          "fractions": (0.1, 1.0) if args.quick else FRACTIONS, "progress": progress}
    docs, folders = [], []
    start = time.perf_counter()
    nets = (("true", "digits", "digits net, true labels"),
            ("control", "digits-control", "digits net, true labels, the shuffled net's 256 digits and epochs"),
            ("shuffled", "digits-shuffled", "digits net, shuffled labels"))
    for labels, name, title in nets:
        progress(f"train ({labels} labels)", 0, 1)
        epochs = (8 if labels == "true" else None) if args.quick else None
        model = trained_digits_net(labels=labels, epochs=epochs).to(dev)
        progress(f"train ({labels} labels)", 1, 1)
        x, y = training_set(labels)
        x, y = x[:limit], y[:limit]
        card = build_card(model, x, y, title=f"{title} (measured on {len(x)} of its training digits)",
                          model_name=f"stabkern.zoo.digits.trained_digits_net(labels={labels!r}"
                          f"{', epochs=8' if epochs else ''})", data_name=f"digits training set ({labels})",
                          **kw)
        folders.append(write_card(card, out / name))
        docs.append((name, card.doc))
        _print_notes(args, card.notes)
    elapsed = time.perf_counter() - start
    table = summary_table(docs)
    real, control, shuffled = (doc for _, doc in docs)
    # the matched contrast (same digits, same epochs, only the labels differ) is the one that is not confounded
    contrast = _contrast(control, shuffled, "true labels, same 256 digits")
    full = _contrast(real, shuffled, "true labels, all 1348 digits")
    write_set(out, {"summary.json": json_writer({"cards": {n: str(f) for (n, _), f in zip(docs, folders)},
                                                 "contrast": contrast, "contrast_full_data": full,
                                                 "wall_time_s": elapsed})})
    _emit(args, {"cards": {n: doc for n, doc in docs}, "contrast": contrast, "contrast_full_data": full,
                 "wall_time_s": elapsed},
          "\n".join([table, "", "matched: " + contrast["text"], "full data (confounded by data size and epochs): "
                     + full["text"], f"cards: {', '.join(f'{f}/card.md' for f in folders)} ({elapsed:.0f} s)"]))


def _contrast(real: dict, shuffled: dict, what: str = "true labels") -> dict:
    """Does the paper's contrast show: less attenuation of first-layer noise and a smaller bound on true labels?"""
    from ..card.render import headline

    a, b = headline(real), headline(shuffled)
    att = (a["attenuation_first_to_last"], b["attenuation_first_to_last"])
    ours = (a["log10"].get("ours"), b["log10"].get("ours"))
    shows = None not in att + ours and att[0] < att[1] and ours[0] < ours[1]
    g = lambda v, spec: "undefined or infinite" if v is None else format(v, spec)  # noqa: E731 (JSON null)
    text = (f"{what}: first-layer noise reaches the output at {g(att[0], '.3g')}, log10 bound {g(ours[0], '.2f')}; "
            f"shuffled labels: {g(att[1], '.3g')}, {g(ours[1], '.2f')}: the contrast "
            f"{'shows' if shows else 'does NOT show'} (noise attenuates and the bound is smaller on true labels)")
    return {"attenuation_first_to_last": list(att), "log10_ours": list(ours), "shows": shows, "text": text}
