"""The command line's inputs: MODEL and DATA specs, the device, the output folder, checked up front.

MODEL and DATA go through `stabkern.io` (load_model / load_data; imported lazily), except the embedded
digits specs resolved here: MODEL "digits" (the trained digits net), "digits-shuffled" (the same
architecture trained on shuffled labels) or "digits:FILE" (a DigitsNet state_dict, loaded with
weights_only=True); DATA "digits-train" and "digits-shuffled" (the two nets' training sets, standardized).

DATA's normalization: --mean/--std or --normalize when given; else, for data on the [0, 1] pixel scale,
the normalization MODEL's loader knows (ImageNet's for 1000-class torchvision architectures), else the
data format's published statistics (CIFAR, MNIST, digits), else none. The one used is reported (Data.info).

Every problem is a `CLIError` whose message names the problem and the fix; main.py prints it on one
line and exits with status 2. Not the computation: commands.py.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field

import torch


class CLIError(Exception):
    """Bad input on the command line: the message says what is wrong and how to fix it."""


@dataclass
class Model:
    """architecture: its stabkern.zoo name or "digits" when MODEL named one (compressed.pt then reloads alone);
    normalization: (mean, std) the model expects of [0, 1] pixels, when known; input_size: its (H, W)."""

    model: torch.nn.Module
    name: str
    normalization: tuple | None = None
    input_size: tuple | None = None
    architecture: str | None = None


@dataclass
class Data:
    """info: what was read and how (n_samples, shape, size, normalization with its name and source, notes);
    notes: what the user should know about the inputs (a --limit above the data's size, ...)."""

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    info: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def input_errors() -> tuple:
    """The exception types that mean bad input."""
    from ..io import InputError

    return (CLIError, InputError)


def device(name: str) -> torch.device:
    """torch.device for --device, refusing one this machine does not have."""
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is visible to torch here (torch.cuda.is_available() is "
                       "False); use --device cpu")
    return torch.device(name)


def out_folder(path) -> pathlib.Path:
    """--out DIR, created if needed, after proving a file can be written there."""
    from ..card.render import check_writable

    try:
        return check_writable(path)
    except OSError as err:
        raise CLIError(f"--out {path}: cannot write there ({err.strerror or err}); pass a writable folder "
                       "with --out DIR") from err


def card_folder(out: pathlib.Path, name: str) -> pathlib.Path:
    """OUT/NAME for a card, checked before the work starts: NAME a plain folder name (not a path that
    leaves OUT), and nothing at OUT/NAME that writing the card would clobber or write through."""
    from ..card.render import check_card_folder

    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise CLIError(f"--name {name!r}: give a folder name (no path separators, not '.' or '..'); the card "
                       "is written into OUT/NAME")
    try:
        return check_card_folder(out / name)
    except ValueError as err:
        raise CLIError(str(err)) from err


def load_model(spec: str, *, num_classes=None, trust_pickle: bool = False, dev: torch.device) -> Model:
    """MODEL spec -> Model (eval mode, on `dev`): the digits specs here, everything else by stabkern.io."""
    from ..zoo.digits import DigitsNet, trained_digits_net

    if not spec.startswith("digits"):
        from .. import io

        lm = io.load_model(spec, num_classes=num_classes, trust_pickle=trust_pickle, device=str(dev))
        return Model(lm.model.eval(), lm.name, lm.normalization, lm.input_size,
                     architecture=spec.split(":", 1)[0] if lm.source == "architecture" else None)
    from ..io.data import digits_normalization

    if spec in ("digits", "digits-shuffled"):
        model = trained_digits_net(labels="true" if spec == "digits" else "shuffled")
        return Model(model.to(dev).eval(), spec, digits_normalization(), (8, 8), architecture="digits")
    if spec.startswith("digits:"):
        path = pathlib.Path(spec.split(":", 1)[1])
        if not path.is_file():
            raise CLIError(f"MODEL {spec}: weights file {path} does not exist; give the path of a state_dict "
                           "saved with torch.save(model.state_dict(), path)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CLIError(f"MODEL {spec}: {path} is not a readable torch weights file ({type(err).__name__}); "
                           "save it with torch.save(model.state_dict(), path)") from err
        model = DigitsNet()
        try:
            model.load_state_dict(state)
        except Exception as err:
            raise CLIError(f"MODEL {spec}: {path} does not hold DigitsNet weights ({str(err).splitlines()[0]}); "
                           "pass the state_dict of a stabkern.zoo.digits.DigitsNet") from err
        from ..io.models import check_finite_weights

        check_finite_weights(model, f"MODEL {spec}")
        return Model(model.to(dev).eval(), f"digits:{path.name}", digits_normalization(), (8, 8),
                     architecture="digits")
    raise CLIError(f"MODEL {spec!r}: unknown digits model; pass 'digits', 'digits-shuffled' or "
                   "'digits:WEIGHTS.pt'")


def normalization_flags(normalize=None, mean=None, std=None):
    """--normalize NAME or --mean M.. --std S.. -> (mean, std), "none", or None (no flag given)."""
    from ..io import IMAGENET
    from ..io.data import DEFAULT_NORMALIZATION

    if normalize is not None and (mean is not None or std is not None):
        raise CLIError(f"--normalize {normalize} and --mean/--std both given: pass --normalize NAME, or --mean "
                       "and --std, not both")
    if (mean is None) != (std is None):
        given, missing = ("--mean", "--std") if mean is not None else ("--std", "--mean")
        raise CLIError(f"{given} without {missing}: pass both, one value per channel (or one for every channel)")
    if mean is not None:
        if len(mean) != len(std):
            raise CLIError(f"--mean has {len(mean)} values and --std {len(std)}: give one value per channel for "
                           "each (or one for every channel)")
        if not all(math.isfinite(v) for v in mean + std):
            raise CLIError(f"--mean and --std must be finite, got --mean {mean} --std {std}")
        if min(std) <= 0:
            raise CLIError(f"--std must be positive, got {std}")
        return tuple(mean), tuple(std)
    if normalize == "none":
        return "none"
    # cifar: CIFAR-10's training-set statistics (their source: stabkern/io/data.py DEFAULT_NORMALIZATION)
    return {"imagenet": IMAGENET, "cifar": DEFAULT_NORMALIZATION["cifar10"], None: None}[normalize]


def size_flag(size):
    """--size H W or --size N (square) -> (H, W), or None."""
    if size is None:
        return None
    if len(size) not in (1, 2):
        raise CLIError(f"--size takes H W or one N (N x N), got {len(size)} values: {size}")
    if min(size) < 1:
        raise CLIError(f"--size must be in [1, inf), got {size}")
    return (size[0], size[0]) if len(size) == 1 else tuple(size)


def sweep_flag(text: str | None):
    """--sweep F1,F2,... or none -> the card's accuracy-vs-k fractions (None: the default ladder; (): no sweep)."""
    from ..card.build import check_fractions

    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise CLIError(f"--sweep {text}: give comma-separated fractions k / cap in (0, 1], e.g. --sweep 0.1,0.5,1, "
                       "or --sweep none to skip the accuracy-vs-k curve") from None
    try:
        return check_fractions(values)
    except ValueError as err:
        raise CLIError(f"--sweep {text}: {str(err).replace('fractions ', 'each fraction ', 1)}; e.g. "
                       "--sweep 0.1,0.5,1") from None


def normalization_name(applied) -> str:
    """The name of a (mean, std) pair: imagenet, cifar10, cifar100, mnist, fashion-mnist, digits or custom."""
    from ..io import IMAGENET
    from ..io.data import DEFAULT_NORMALIZATION, digits_normalization

    if applied is None:
        return "none"
    known = {"imagenet": IMAGENET, **DEFAULT_NORMALIZATION, "digits": digits_normalization()}
    for name, (mean, std) in known.items():
        c = len(applied[0])
        if len(mean) in (1, c) and all(abs(a - b) < 1e-6 for a, b in zip(applied[0] + applied[1],
                                                                          (mean * c)[:c] + (std * c)[:c])):
            return name
    return "custom"


def load_data(spec: str, *, limit=None, trust_pickle: bool = False, seed: int = 0, normalization=None, size=None,
              model: Model | None = None, flag: str | None = None) -> Data:
    """DATA spec -> Data (x float32 on the CPU, normalized): the digits training sets here, everything else
    by stabkern.io. normalization: normalization_flags()'s value; size: size_flag()'s; model: whose known
    normalization applies to [0, 1] pixels when no flag is given; flag: the --normalize NAME it came from."""
    if spec in ("digits-train", "digits-shuffled"):
        return _digits_training_set(spec, limit, normalization, size)
    from .. import io
    from ..io.data import normalize

    ld = io.load_data(spec, limit=limit, trust_pickle=trust_pickle, seed=seed, normalization="none", size=size)
    notes = _limit_notes(limit, len(ld.x), ld.name)
    expected = None if model is None else model.normalization
    if normalization is not None:
        chosen, source = (None if normalization == "none" else normalization), "flags"
        if chosen is not None and len(chosen[0]) not in (1, ld.x.shape[1]):
            if flag is not None:  # a named normalization: its statistics' channels
                raise CLIError(f"--normalize {flag}: its statistics have {len(chosen[0])} channels, DATA {ld.name} "
                               f"has {ld.x.shape[1]}; pass --mean and --std for {ld.x.shape[1]} channel(s)")
            raise CLIError(f"--mean/--std have {len(chosen[0])} values for DATA {ld.name}'s {ld.x.shape[1]} "
                           f"channel(s): give {ld.x.shape[1]} (one per channel) or 1")
    elif float(ld.x.min()) < 0 or float(ld.x.max()) > 1:  # floats off the pixel scale: normalized already
        chosen, source = None, "data as given"
        if expected is not None:
            notes.append(f"DATA {ld.name} spans [{float(ld.x.min()):.3g}, {float(ld.x.max()):.3g}], not the [0, 1] "
                         "pixel scale: taken as already normalized (pass --normalize or --mean/--std to normalize it)")
    elif expected is not None and len(expected[0]) in (1, ld.x.shape[1]):
        chosen, source = expected, "model"
        if ld.published is not None and normalization_name(ld.published) != normalization_name(expected):
            notes.append(f"DATA normalized with MODEL {model.name}'s statistics ({normalization_name(expected)}), not "
                         f"{normalization_name(ld.published)}'s published ones (pass --normalize or --mean/--std "
                         "to choose)")
    else:
        chosen, source = ld.published, "data"
        if chosen is None:
            source = "none"
            notes.append(f"DATA {ld.name} is used as [0, 1] pixels, unnormalized: no normalization is known for "
                         "MODEL (pass --normalize imagenet|cifar or --mean/--std if it expects normalized inputs)")
    try:
        x, applied = normalize(ld.x, chosen)
    except io.InputError as err:
        raise CLIError(f"DATA {ld.name}: {err}; pass --normalize or --mean/--std for its "
                       f"{ld.x.shape[1]} channels") from err
    if model is not None and model.input_size is not None and tuple(x.shape[-2:]) != tuple(model.input_size):
        h, w = model.input_size
        notes.append(f"MODEL {model.name} expects {h}x{w} inputs; DATA's are {x.shape[-2]}x{x.shape[-1]} (pass "
                     f"--size {h} {w} to resize them)")
    return Data(x.contiguous(), ld.y, ld.name, _info(x, applied, source, size), notes)


def _info(x: torch.Tensor, applied, source: str, size) -> dict:
    """Data.info: the samples' count and shape, the size and whether it was resized, the normalization."""
    norm = {"name": normalization_name(applied), "source": source}
    if applied is not None:
        norm.update(mean=list(applied[0]), std=list(applied[1]))
    return {"n_samples": int(x.shape[0]), "shape": list(x.shape[1:]), "size": list(x.shape[-2:]),
            "resized": size is not None, "normalization": norm}


def _limit_notes(limit, n: int, name: str) -> list:
    if limit is not None and n < limit:
        return [f"--limit {limit} is above the {n} samples of DATA {name}: all {n} are used"]
    return []


def _digits_training_set(spec: str, limit, normalization, size) -> Data:
    """The digits nets' training sets, standardized as the nets expect (stabkern.zoo.digits.training_set)."""
    from ..io.data import digits_normalization
    from ..zoo.digits import training_set

    if normalization is not None or size is not None:
        raise CLIError(f"DATA {spec} is the digits nets' training set, already standardized and 8x8 as they "
                       "expect: --normalize, --mean, --std and --size apply to data read from files")
    x, y = training_set("true" if spec == "digits-train" else "shuffled")
    notes = _limit_notes(limit, len(x), spec)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return Data(x, y, spec, _info(x, digits_normalization(), "data", None), notes)


def check_fit(model: Model, data: Data, dev: torch.device) -> int:
    """Run one sample through the model; check the labels against its outputs. Returns the class count."""
    if not torch.is_floating_point(data.x):
        raise CLIError(f"DATA {data.name}: inputs are {data.x.dtype}; they must be floating point images")
    if len(data.x) == 0:
        raise CLIError(f"DATA {data.name}: no samples; pass data with at least one sample (and --limit > 0)")
    try:
        with torch.no_grad():
            out = model.model(data.x[:1].to(dev))
    except Exception as err:
        raise CLIError(f"DATA {data.name}: samples of shape {tuple(data.x.shape[1:])} do not fit MODEL "
                       f"{model.name} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); pass data of the "
                       "shape the model takes") from err
    classes = out.flatten(1).shape[1]
    if data.y is not None and len(data.y) and (int(data.y.min()) < 0 or int(data.y.max()) >= classes):
        raise CLIError(f"DATA {data.name}: labels span [{int(data.y.min())}, {int(data.y.max())}] but MODEL "
                       f"{model.name} has {classes} outputs; labels must be class indices in [0, {classes}) "
                       "(or set --num-classes)")
    return classes
