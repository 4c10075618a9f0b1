"""`stabkern study`: a study over the nets a manifest names, or the embedded digits grid (--demo).

The manifest is JSON (a list of records, or {"nets": [...]}) or CSV (one row per net). Each net has
`name`, `model` (a MODEL spec as `stabkern card` takes it: ARCH:WEIGHTS.pt, a TorchScript or export file,
'digits'), `train` and `test` (DATA specs with labels: a dataset folder, an .npz, 'digits-train',
'digits'), and its hyperparameters (JSON: a `hyperparameters` object; CSV: every other column, numbers
read as numbers). Relative paths are read from the manifest's folder. docs/study.md has the definitions.
"""

from __future__ import annotations

import csv
import json
import pathlib

from .inputs import CLIError, device, load_data, load_model, out_folder

FIELDS = ("name", "model", "train", "test")


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_manifest(path) -> list[dict]:
    """The manifest's records: {"name", "model", "train", "test", "hyperparameters"}, checked (every field
    there, names unique, at least one net); paths made absolute against the manifest's folder."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CLIError(f"manifest not found: {path} (give a .json or .csv file naming the nets; see docs/study.md)")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            records = [{**{k: r.get(k) for k in FIELDS},
                        "hyperparameters": {k: _number_or_text(v) for k, v in r.items() if k not in FIELDS}}
                       for r in rows]
        elif path.suffix.lower() == ".json":
            doc = json.loads(path.read_text())
            records = doc.get("nets") if isinstance(doc, dict) else doc
        else:
            raise CLIError(f"manifest {path.name}: expected a .json or .csv file")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise CLIError(f"manifest {path.name} cannot be read: {err}") from err
    if not isinstance(records, list) or not records:
        raise CLIError(f"manifest {path.name} names no nets: give a list of records (or {{\"nets\": [...]}})")
    names = set()
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise CLIError(f"manifest {path.name}, net {i}: expected an object with {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if not r.get(k)]
        if missing:
            raise CLIError(f"manifest {path.name}, net {i}: missing {', '.join(missing)}")
        if r["name"] in names:
            raise CLIError(f"manifest {path.name}: the net name {r['name']!r} is used twice; names must be unique")
        names.add(r["name"])
        r.setdefault("hyperparameters", {})
        if not isinstance(r["hyperparameters"], dict):
            raise CLIError(f"manifest {path.name}, net {r['name']!r}: hyperparameters must be an object")
        for key in ("model", "train", "test"):
            spec = str(r[key])
            head, sep, tail = spec.rpartition(":") if ":" in spec and key == "model" else ("", "", spec)
            if tail and not pathlib.Path(tail).is_absolute() and (path.parent / tail).exists():
                r[key] = f"{head}{sep}{path.parent / tail}"
    return records


def _nets_from_manifest(records: list[dict], args, dev):
    from ..study import Net

    nets = []
    for r in records:
        train = load_data(r["train"], trust_pickle=args.trust_pickle, seed=args.seed)
        test = load_data(r["test"], trust_pickle=args.trust_pickle, seed=args.seed)
        for which, d in (("train", train), ("test", test)):
            if d.y is None:
                raise CLIError(f"net {r['name']!r}: its {which} data {r[which]} has no labels; the gap needs them")

        def model(spec=r["model"]):
            return load_model(spec, trust_pickle=args.trust_pickle, dev=dev).model

        nets.append(Net(name=r["name"], model=model, train=(train.x, train.y), test=(test.x, test.y),
                        hyperparameters=r["hyperparameters"]))
    return nets


def cmd_study(args) -> None:
    """Measure every net, rank the measures by Kendall's τ with the gap, write OUT/study.{json,md} and the
    figures; print the τ table (or the JSON report with --json)."""
    from ..progress import bars
    from ..study import Settings, run_study
    from ..study.write import markdown

    if args.demo == bool(args.manifest):
        raise CLIError("give a MANIFEST or --demo (one of them)")
    if args.probes < 2:
        raise CLIError(f"--probes must be at least 2 (the interval of mu needs a standard error), got {args.probes}")
    dev = device(args.device)
    out = out_folder(args.out or ("study-demo" if args.demo else "study"))
    settings = Settings(samples=args.samples, seed=args.seed, probes=args.probes, trials=args.trials)
    if args.demo:
        from ..study.demo import demo_nets

        nets = demo_nets(args.seed)
    else:
        nets = _nets_from_manifest(read_manifest(args.manifest), args, dev)
    report = run_study(nets, out, settings=settings, progress=bars(quiet=args.quiet or args.json))
    if args.demo:
        from ..study.demo import monitored_training

        monitored_training(out, seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(markdown(report).split("## Nets")[0].rstrip())
        failed = [n["name"] for n in report["nets"] if n.get("error")]
        if failed:
            print(f"\n{len(failed)} net(s) failed (their errors are in {out / 'study.md'}): {', '.join(failed)}")
        print(f"\nwritten: {out / 'study.md'}, study.json, measures_vs_gap.png, tau.png")
