"""The command line's inputs: MODEL and DATA specs, the device, the output folder, checked up front.

MODEL and DATA go through `stabkern.io` (load_model / load_data; imported lazily), except the embedded
digits specs resolved here: MODEL "digits" (the trained digits net), "digits-shuffled" (the same
architecture trained on shuffled labels) or "digits:FILE" (a DigitsNet state_dict, loaded with
weights_only=True); DATA "digits-train" and "digits-shuffled" (the two nets' training sets).

Every problem is a `CLIError` whose message names the problem and the fix; main.py prints it on one
line and exits with status 2. Not the computation: commands.py.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch


class CLIError(Exception):
    """Bad input on the command line: the message says what is wrong and how to fix it."""


@dataclass
class Model:
    """architecture: its stabkern.zoo name or "digits" when MODEL named one (compressed.pt then reloads alone)."""

    model: torch.nn.Module
    name: str
    architecture: str | None = None


@dataclass
class Data:
    x: torch.Tensor
    y: torch.Tensor | None
    name: str


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
        return Model(lm.model.eval(), lm.name, spec.split(":", 1)[0] if lm.source == "architecture" else None)
    if spec in ("digits", "digits-shuffled"):
        model = trained_digits_net(labels="true" if spec == "digits" else "shuffled")
        return Model(model.to(dev).eval(), spec, "digits")
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
        return Model(model.to(dev).eval(), f"digits:{path.name}", "digits")
    raise CLIError(f"MODEL {spec!r}: unknown digits model; pass 'digits', 'digits-shuffled' or "
                   "'digits:WEIGHTS.pt'")


def load_data(spec: str, *, limit=None, trust_pickle: bool = False, seed: int = 0) -> Data:
    """DATA spec -> Data (x float32 on the CPU): the digits training sets here, everything else by stabkern.io."""
    if spec not in ("digits-train", "digits-shuffled"):
        from .. import io

        ld = io.load_data(spec, limit=limit, trust_pickle=trust_pickle, seed=seed)
        return Data(ld.x, ld.y, ld.name)
    from ..zoo.digits import training_set

    x, y = training_set("true" if spec == "digits-train" else "shuffled")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return Data(x, y, spec)


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
