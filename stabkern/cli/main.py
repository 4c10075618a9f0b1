"""`stabkern` (and `python -m stabkern`): the command line. argparse subcommands demo, card, meter,
compress, study, bench, info, each with --help, --json, --device, --out, --seed, --quiet, --debug.

argparse because it is in the standard library: the command adds no dependency and its behavior
(usage errors exit 2 with one line on stderr) is what the bad-input rule asks of every other error.
Bad input (commands raise `CLIError`, or stabkern.io's `InputError`) prints `stabkern: error: ...` on
one line and exits 2; --debug shows the traceback instead. The work itself lives in commands.py.
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    g.add_argument("--out", metavar="DIR", help="folder for the files written (created if needed)")
    g.add_argument("--seed", type=int, default=0, help="noise and sign seed in [0, 2^64) (default: 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _model_data(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="'digits', ARCH:WEIGHTS.pt, a TorchScript file, or a torch.export file (with --trust-pickle)")
    p.add_argument("--data", required=data_required, metavar="DATA",
                   help="'digits', a dataset folder or an .npz/.npy file" +
                   ("" if data_required else " (without it: what the weights alone say)"))
    p.add_argument("--limit", type=int, metavar="N", help="use the first N samples")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default: 256)")
    p.add_argument("--num-classes", type=int, help="outputs of an ARCH:WEIGHTS model")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow files that can run code when loaded: pickles and torch.export (.pt2) programs")
    p.add_argument("--layers", metavar="NAMES", help="only these Conv2d/Linear layers: comma-separated names or "
                   "glob patterns, e.g. 'features.*,classifier.1' (default: all; names as the model names them)")
    g = p.add_argument_group("inputs", "DATA's normalization, by default: MODEL's own for [0, 1] pixels (ImageNet's "
                             "for 1000-class torchvision architectures), else the data format's published one")
    g.add_argument("--normalize", choices=("imagenet", "cifar", "none"),
                   help="normalize DATA's [0, 1] pixels with ImageNet's or CIFAR-10's statistics, or not at all")
    g.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean of [0, 1] pixels (with --std)")
    g.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std of [0, 1] pixels (with --mean)")
    g.add_argument("--size", type=int, nargs="+", metavar="N", help="resize DATA to H W (or N x N) pixels")


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(prog="stabkern", description="Noise stability, generalization bounds and "
                                  "compression (Arora et al., ICML 2018) of conv nets; see docs/tooling.md.")
    # no abbreviated options: "--dat" must not silently mean "--data" (nor a future option it would also prefix)
    top.allow_abbrev = False
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                             parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("demo", parents=[common], help="the cards of the digits net on real and shuffled labels",
                       description="Write the stability cards of the digits net trained on scikit-learn's digits "
                       "(all 1348 training digits), of the same architecture trained on 256 digits with shuffled "
                       "labels and of its matched control (the same 256 digits and epochs, true labels); print the "
                       "summary table and the contrasts.")
    p.add_argument("--quick", action="store_true", help="smaller nets and data (CI: under a minute)")

    p = sub.add_parser("card", parents=[common], help="the stability card of MODEL on DATA",
                       description="Write OUT/NAME/card.md, card.json, layers.csv and PNG figures: attenuation, "
                       "cushions, contraction, capacity terms, compressibility, accuracy vs k, and what the weights "
                       "alone say (without --data, only that; docs/card.md).")
    _model_data(p, data_required=False)
    p.add_argument("--name", help="card folder name (default: from MODEL)")
    p.add_argument("--eps", type=float, default=0.5, help="choose_k's relative output error (default: 0.5)")
    p.add_argument("--mode", choices=("filter", "tensor"), default="filter")
    p.add_argument("--trials", type=int, default=8, help="noise draws per sample and layer (default: 8)")
    p.add_argument("--margin-quantile", type=float, default=0.1, help="margin gamma's quantile (default: 0.1)")
    p.add_argument("--sweep", metavar="F1,F2,...",
                   help="k / cap fractions of the accuracy-vs-k curve, in (0, 1] and increasing (default: "
                   "0.05,0.1,0.2,0.5,1), or 'none' to skip it")

    p = sub.add_parser("meter", parents=[common], help="every noise-stability meter and the capacity terms",
                       description="stabkern.measure on MODEL and DATA: attenuation, cushions, contraction, "
                       "smoothness, noise sensitivity, capacity terms (OUT/measure.json).")
    _model_data(p)
    p.add_argument("--alpha", type=float, default=0.1, help="noise norm / input norm (default: 0.1)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--margin-quantile", type=float, default=0.1)

    p = sub.add_parser("compress", parents=[common], help="Algorithm 1 on every Conv2d/Linear layer",
                       description="Compress MODEL layer by layer with k coefficients per layer (--k) or "
                       "choose_k's k (--eps); measure each layer's output error on DATA (OUT/compression.json, "
                       "OUT/compressed.pt, which stabkern.load_compressed(path) reloads).")
    _model_data(p)
    k = p.add_mutually_exclusive_group(required=True)
    k.add_argument("--k", type=int, help="coefficients per layer (per filter in filter mode)")
    k.add_argument("--eps", type=float, help="choose k per layer for this relative output error (choose_k)")
    p.add_argument("--mode", choices=("filter", "tensor"), default="filter")

    p = sub.add_parser("bench", parents=[common], help="time Algorithm 1 on one VGG-sized conv layer",
                       description="Project and reconstruct one weight (default 512x512x3x3, k = 4096): rates "
                       "in sign-MAC/s and the error beside its expectation (n - 1) / k.")
    p.add_argument("--shape", type=int, nargs="+", default=[512, 512, 3, 3], help="weight shape")
    p.add_argument("-k", type=int, default=4096, help="number of sign coefficients")
    p.add_argument("--backend", default="auto")

    p = sub.add_parser("study", parents=[common], help="does each measure rank many nets by their generalization gap",
                       description="Measure every net a manifest names (or the embedded digits grid, --demo), and "
                       "rank the measures by Kendall's tau and Jiang et al.'s granulated tau with the gap "
                       "(OUT/study.md, study.json, figures; resumable: rerun into the same OUT; docs/study.md).")
    p.add_argument("manifest", metavar="MANIFEST", nargs="?",
                   help="a .json or .csv file: name, model, train, test and hyperparameters per net")
    p.add_argument("--demo", action="store_true", help="the 24-net digits grid, trained once and cached")
    p.add_argument("--samples", type=int, default=256, help="training samples the meters use per net (default: 256)")
    p.add_argument("--probes", type=int, default=4, help="Hutchinson probes of the Jacobian meters (default: 4)")
    p.add_argument("--trials", type=int, default=8, help="noise draws per sample and layer (default: 8)")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled files (runs code from the file)")

    sub.add_parser("info", parents=[common], help="versions, what was built, usable backends",
                   description="Versions, compiled extensions and which backends are usable here.")
    return top


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit status (0, or 2 for bad input)."""
    from . import commands
    from .inputs import input_errors

    args = parser().parse_args(argv)
    try:
        commands.run(args)
    except input_errors() as err:
        if args.debug:
            traceback.print_exc()
        print(f"stabkern {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stabkern {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
