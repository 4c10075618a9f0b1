"""Load a user's model from a spec string: an architecture with a state_dict, TorchScript, torch.export, ...

Specs (`load_model(spec)`):
- "ARCH:WEIGHTS" - an architecture of `stabkern.zoo.ARCHITECTURES` and a state_dict file, read with
  torch.load(weights_only=True) and loaded strictly; num_classes is read from the last Linear of the
  weights unless given. "ARCH" alone: random weights (said in the name).
- a TorchScript file (torch.jit.save; scripted or traced), recognized by its contents, not its suffix: run op by
  op as an eager module whose convolutions and linear maps are nn.Conv2d / nn.Linear named as the file
  names them (torchscript.py), so the meters can hook and swap them.
- a torch.export program (torch.export.save, usually .pt2) only with trust_pickle=True: torch.export.load
  unpickles parts of the file without weights_only (when the safe load fails) and evaluates the graph's
  symbolic shape expressions with sympy (Python eval), so a crafted file runs code when loaded. Its graph's
  convolution and linear nodes become nn.Conv2d / nn.Linear modules (exported.py); it must have been exported
  with a dynamic batch size, as the meters run batches of every size.
- a pickled whole nn.Module (torch.save(model)) only with trust_pickle=True: unpickling runs code.
- "digits": `stabkern.zoo.digits.trained_digits_net()`.

What this is not: a model hub. Nothing is downloaded. Every failure is an `InputError` with the fix.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import zoo
from .._checks import check_positive_int
from .errors import InputError, first_line as _first_line
from .exported import eager_program
from .torchscript import eager_torchscript

SOURCES = ("architecture", "torchscript", "export", "pickle", "digits")
# torchvision's ImageNet weights expect this normalization of [0, 1] RGB pixels and 224x224 inputs.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SPEC_HELP = ("MODEL is ARCH (random weights), ARCH:WEIGHTS.pt (a state_dict), a TorchScript file, a "
             "torch.export (.pt2) file or a pickled model with --trust-pickle, or 'digits'")


@dataclass
class LoadedModel:
    """model: in eval mode on the asked device. normalization: (mean, std) per channel on the [0, 1]
    pixel scale when known for this model, else None. input_size: (H, W) it expects, when known."""

    model: nn.Module
    name: str
    source: str
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    input_size: tuple[int, int] | None


def load_model(spec: str, *, num_classes: int | None = None, trust_pickle: bool = False,
               device: str = "cpu") -> LoadedModel:
    """The model named by `spec` (see the module docstring), on `device` ("cpu", "cuda", "cuda:1"...).

    num_classes: the output count for "ARCH" / "ARCH:WEIGHTS" (default: read from the weights, or 1000
    for random weights); ignored by the other kinds. An architecture with 1000 classes is taken to be
    ImageNet-shaped: normalization IMAGENET and input 224x224; other heads have unknown statistics.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a string, got {type(spec).__name__}")
    spec = str(spec)
    if num_classes is not None:
        try:
            num_classes = check_positive_int("num_classes", num_classes)
        except ValueError as err:
            raise InputError(f"{err} (--num-classes)") from None
    device = _check_device(device)

    if spec == "digits":
        loaded = _digits()
    elif spec in zoo.ARCHITECTURES:
        classes = num_classes or 1000
        loaded = _architecture(spec, zoo.build(spec, classes), f"{spec} (random weights)", classes)
    elif ":" in spec and not Path(spec).exists() and _looks_like_arch(spec.split(":", 1)[0]):
        arch, weights = spec.split(":", 1)
        loaded = _arch_with_weights(arch, Path(weights).expanduser(), num_classes)
    elif not Path(spec).expanduser().exists() and _looks_like_arch(spec):
        raise InputError(f"unknown architecture {spec!r} (and no such file): use one of "
                         f"{', '.join(zoo.ARCHITECTURES)}, or 'digits', or a model file")
    else:
        loaded = _file(Path(spec).expanduser(), trust_pickle)
    check_finite_weights(loaded.model, loaded.name)
    try:
        loaded.model.to(device)
    except RuntimeError as err:
        raise InputError(f"cannot move the model to {device}: {_first_line(err)}; use --device cpu") from None
    return loaded


def _looks_like_arch(prefix: str) -> bool:
    """A bare name like "resnet18" (letters, digits, underscores): the ARCH of "ARCH:WEIGHTS". Longer
    than one character, so the drive of a Windows path ("C:...") is not taken for one."""
    return len(prefix) > 1 and prefix.replace("_", "").isalnum()


def _check_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}: use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine (no GPU or a CPU-only torch): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{device} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise InputError(f"device {device} is not supported: use cpu or cuda")
    return device


# --------------------------------------------------------------------------- kinds


def _digits() -> LoadedModel:
    try:
        from .data import digits_normalization

        model = zoo.trained_digits_net()
        normalization = digits_normalization()
    except ImportError:
        raise InputError("the digits net trains on scikit-learn's digits: pip install scikit-learn") from None
    return LoadedModel(model.eval(), "digits", "digits", normalization, (8, 8))


def _architecture(arch: str, model: nn.Module, name: str, classes: int) -> LoadedModel:
    imagenet = classes == 1000
    return LoadedModel(model.eval(), name, "architecture", IMAGENET if imagenet else None,
                       (224, 224) if imagenet else None)


def _arch_with_weights(arch: str, path: Path, num_classes: int | None) -> LoadedModel:
    if arch not in zoo.ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}: use one of {', '.join(zoo.ARCHITECTURES)}")
    _check_file(path, "weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        if not _refused_by_weights_only(err):
            raise InputError(f"{path} is not a readable torch weights file ({_first_line(err)}): "
                             f"the file is corrupt or of another kind") from None
        raise InputError(f"{path} is not a plain state_dict (it pickles Python objects, e.g. a whole model): "
                         f"save model.state_dict(), or load the whole model as MODEL={path} with "
                         f"--trust-pickle if you trust the file") from None
    state = _unwrap_state_dict(state, path)
    classes = num_classes or _classes_from_state(state, path)
    model = zoo.build(arch, classes)
    _load_strict(model, state, arch, classes, path, inferred=num_classes is None)
    return _architecture(arch, model, f"{arch}:{path.name}", classes)


def _unwrap_state_dict(state, path: Path) -> dict:
    """A state_dict, from a bare one or a training checkpoint {"state_dict" | "model": ...}; a
    DataParallel "module." prefix is dropped."""
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError(f"{path} does not hold a state_dict (a dict of parameter names to tensors): "
                         f"save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _classes_from_state(state: dict, path: Path) -> int:
    """Output count of the last layer: the last '*.weight' of a Linear (2-D) or of a 1x1 conv (SqueezeNet
    scores classes with one) in the state_dict."""
    for key in reversed(list(state)):
        t = state[key]
        if key.endswith("weight") and (t.dim() == 2 or (t.dim() == 4 and t.shape[2:] == (1, 1))):
            return int(t.shape[0])
    raise InputError(f"{path} has no Linear or 1x1 conv weight to read the class count from: pass --num-classes")


def _load_strict(model: nn.Module, state: dict, arch: str, classes: int, path: Path, inferred: bool) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} is {got[k]} in the file, {expected[k]} in {arch}" for k in expected
             if k in got and got[k] != expected[k]]
    if missing or unexpected:
        raise InputError(f"{path} does not match {arch}: missing keys {_few(missing)}, unexpected keys "
                         f"{_few(unexpected)}; is it a state_dict of another architecture?")
    if wrong:
        hint = "" if inferred else " (check --num-classes)"
        raise InputError(f"{path} does not fit {arch} with {classes} classes: {_few(wrong)}{hint}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # e.g. dtypes that cannot be copied
        raise InputError(f"{path} cannot be loaded into {arch}: {_first_line(err)}") from None


def _file(path: Path, trust_pickle: bool) -> LoadedModel:
    if not path.exists():
        raise InputError(f"no such model file or architecture: {path}. {SPEC_HELP}; architectures: "
                         f"{', '.join(zoo.ARCHITECTURES)}")
    _check_file(path, "model file")
    kind = _archive_kind(path)
    if kind == "torchscript":
        try:
            with _torch_quiet():  # torch 2.9+ warns that TorchScript is deprecated: not the user's to act on here
                script = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{path} is not a loadable TorchScript file ({_first_line(err)})") from None
        return LoadedModel(eager_torchscript(script, path.name).eval(), path.name, "torchscript", None, None)
    if kind == "export":
        if not trust_pickle:
            raise InputError(f"{path} is a torch.export program; loading one can run code from the file (torch "
                             f"unpickles parts of it and evaluates its shape expressions), so it is read only with "
                             f"--trust-pickle (trust_pickle=True). Safer: save a state_dict and pass "
                             f"ARCH:WEIGHTS.pt, or a TorchScript file") from None
        return _exported(path)
    return _pickled(path, trust_pickle)


def _archive_kind(path: Path) -> str:
    """"torchscript", "export" or "pickle", from the names inside the zip archive torch writes."""
    if not zipfile.is_zipfile(path):
        if path.suffix == ".pt2":
            raise InputError(f"{path} is not a torch.export archive (not a zip file): the file is corrupt")
        return "pickle"  # torch.save's legacy format, or garbage: torch.load says which
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path} is a damaged archive: {_first_line(err)}") from None
    leaves = {n.split("/", 1)[-1] for n in names}
    if "constants.pkl" in leaves or any("/code/" in n for n in names):
        return "torchscript"
    if "archive_format" in leaves or any(n.split("/", 1)[-1].startswith("models/") for n in names):
        return "export"
    return "pickle"


@contextlib.contextmanager
def _torch_quiet():
    """No log records or warnings while inside: torch.export.load logs what it falls back to (with a
    traceback) before it raises, and the loader reports the failure in one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _exported(path: Path) -> LoadedModel:
    try:
        with _torch_quiet():
            program = torch.export.load(str(path))
            model = program.module()
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path} is not a loadable torch.export program ({_first_line(err)})") from None
    batch = _exported_batch(program)
    if batch is not None:
        raise InputError(f"{path} was exported for batches of exactly {batch} samples, and its graph may hold that "
                         f"size; the meters run other batch sizes. Export with a dynamic batch: torch.export.export("
                         f"model, (x,), dynamic_shapes=({{0: torch.export.Dim('batch')}},)), or save TorchScript")
    model = eager_program(model, path.name)
    # An exported graph is fixed in the mode it was exported in (normally eval); torch makes its
    # train()/eval() raise. Give back nn.Module's, which only set the flags, so callers that put a
    # model in eval mode (the meters do) work; the computation is unchanged.
    for method in ("train", "eval"):
        vars(model).pop(method, None)
    return LoadedModel(model.eval(), path.name, "export", None, _exported_input_size(program))


def _first_input_shape(program) -> tuple | None:
    """The shape of the program's first user input (ints for static sizes, SymInts for dynamic ones)."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            return getattr(node.meta.get("val"), "shape", None)
    return None


def _exported_input_size(program) -> tuple[int, int] | None:
    """(H, W) of the first user input when it is a 4-D tensor with static sizes, else None."""
    shape = _first_input_shape(program)
    if shape is not None and len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def _exported_batch(program) -> int | None:
    """The first input's batch size when the program was exported with it fixed, else None (dynamic)."""
    shape = _first_input_shape(program)
    return int(shape[0]) if shape is not None and len(shape) > 0 and isinstance(shape[0], int) else None


def _pickled(path: Path, trust_pickle: bool) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
        if not _refused_by_weights_only(err):
            raise InputError(f"{path} is not a model file torch can read ({_first_line(err)}): the file is "
                             f"corrupt or of another kind. {SPEC_HELP}") from None
        if not trust_pickle:
            raise InputError(f"{path} is a pickled Python object (a whole model?); unpickling can run code, "
                             f"so it is read only with --trust-pickle (trust_pickle=True). Safer: save a "
                             f"state_dict and pass ARCH:{path.name}, or a TorchScript / torch.export file") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - a missing class, a damaged file...
            raise InputError(f"{path} could not be unpickled ({_first_line(err)}): is the model's class "
                             f"importable here?") from None
    if isinstance(obj, dict):
        raise InputError(f"{path} holds a state_dict, which needs its architecture: pass ARCH:{path} with "
                         f"ARCH one of {', '.join(zoo.ARCHITECTURES)}")
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} holds a {type(obj).__name__}, not an nn.Module. {SPEC_HELP}")
    return LoadedModel(obj.eval(), path.name, "pickle", None, None)


def _refused_by_weights_only(err: BaseException) -> bool:
    """torch.load(weights_only=True) read a valid pickle holding objects other than tensors and
    containers (as opposed to a damaged file, which raises other errors or other messages)."""
    return isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower()


def check_finite_weights(model: nn.Module, name: str) -> None:
    """InputError naming the first parameter or buffer of `model` that holds NaN or Inf: such weights
    make every output non-finite, which the meters would only report deep inside a computation."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for key, t in tensors:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InputError(f"{name}: {key} holds {bad} NaN or Inf value(s) of {t.numel()}: the weights are "
                             f"corrupt or come from a diverged training run; load finite weights")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} {path} is a folder, not a file")


def _few(items, n: int = 3) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more

