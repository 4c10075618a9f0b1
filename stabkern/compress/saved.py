"""A compressed model as one self-describing file: `save_compressed` writes it, `load_compressed` reads it back.

A state_dict alone cannot be reloaded: the sketched layers' k, mode and hyper-parameters live in the
constructors, not in the tensors. This file holds them, as plain values and tensors only, so it loads
with torch.load(weights_only=True) (untrusted files run no code):

    format "stabkern-compressed-model", version 1, spec (the sign spec, stabkern.spec.SPEC), stabkern_version
    architecture  None (the user's own class), or {"name": a stabkern.zoo.ARCHITECTURES name or "digits",
                  "num_classes": int or None}
    sketches      one record per sketched layer, in modules() order: name (qualified), type ("Conv2d" |
                  "Linear"), k, mode, seed (int in [0, 2^64)), stream, weight_shape, backend, precision,
                  conv ({stride, padding, dilation, groups, padding_mode}, Conv2d only), tied_to / bias_of
                  (the earlier layer whose coefficients / bias it shares, or None), coefficients, bias
    identities    names of the nn.Identity modules (where fold_bn put one in place of a BatchNorm2d)
    state         every other entry of the model's state_dict (dense layers, BatchNorm statistics, ...)

Reloading builds the dense architecture (or copies the caller's dense model), puts an empty sketched
layer of each record in place of the dense layer of that name, and loads the state strictly: every
sketched layer regenerates the same weight from the same coefficients, seed and stream, so the outputs
are the saved model's bit for bit.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from torch import nn

from .. import zoo
from .._checks import check_choice, check_int, check_positive_int, check_seed
from ..ops import BACKEND_NAMES, MAX_STREAM, PRECISIONS
from ..sketched import FLOAT_DTYPES, SKETCHED_TYPES, SketchedConv2d, SketchedLinear, check_k, check_mode
from ..spec import SPEC
from .model import _carry_hooks, sketchable_layers

FORMAT = "stabkern-compressed-model"
VERSION = 1
DIGITS = "digits"  # stabkern.zoo.digits.DigitsNet() (the CLI's digits nets)
_CONV_FIELDS = ("stride", "padding", "dilation", "groups", "padding_mode")
_SKETCH_KEYS = ("coefficients", "seed", "stream", "bias")  # a sketched layer's state_dict entries


def save_compressed(model: nn.Module, path, *, architecture: str | None = None,
                    num_classes: int | None = None) -> None:
    """Write `model` (a compress_model result) to `path` in the format above, for `load_compressed`.

    architecture: the model's stabkern.zoo name ("resnet18", ...) or "digits", so that the file reloads
    with no model at hand; None for a user's own class (load_compressed then takes the dense model).
    num_classes: the zoo architecture's output count (default: the output count of its last Conv2d /
    Linear). A named architecture is checked here against the model (layer names, types and shapes),
    so a wrong name fails now, not when the file is read.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a compress_model result), got {type(model).__name__}")
    arch = _architecture_record(model, architecture, num_classes)
    layers = sketchable_layers(model)
    sketches, first_of = [], {}  # first_of: id of a coefficients / bias Parameter -> the first layer holding it
    for _, name, m in layers:
        if isinstance(m, SKETCHED_TYPES):
            sketches.append(_sketch_record(name, m, first_of))
    sketched_keys = {f"{r['name']}.{key}" if r["name"] else key for r in sketches for key in _SKETCH_KEYS}
    state = {key: t for key, t in model.state_dict().items() if key not in sketched_keys}
    identities = [name for name, m in model.named_modules() if isinstance(m, nn.Identity)]
    if arch is not None:  # on the meta device: no memory, no random init, only names and shapes
        with torch.device("meta"):
            _fill(_build(arch), sketches, identities, state, f"architecture {arch['name']!r}", check_only=True)
    from .. import __version__

    torch.save({"format": FORMAT, "version": VERSION, "spec": SPEC, "stabkern_version": __version__,
                "architecture": arch, "sketches": sketches, "identities": identities, "state": state}, path)


def load_compressed(path, model: nn.Module | None = None, *, device="cpu") -> nn.Module:
    """The compressed model saved by `save_compressed` (or `stabkern compress --out`), in eval mode on `device`.

    The file is read with torch.load(weights_only=True). When it names its architecture, that is built
    (stabkern.zoo.build, or DigitsNet) and `model` is not needed. For a user's own class pass `model`:
    the dense model the file was compressed from (its class; any weights): a copy of it is filled, the
    model itself is not changed. The result's outputs equal the saved model's bit for bit (same backend).
    Errors (ValueError naming the file and the fix): not a stabkern compressed model, a format version or
    sign spec this stabkern does not read, a model whose layers do not match the file, no model for a
    file without an architecture; FileNotFoundError for a missing file.
    """
    path = Path(path)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use device='cpu'")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be the dense nn.Module the file was compressed from, got {type(model).__name__}")
    doc = _read(path)
    arch = doc["architecture"]
    if model is None:
        if arch is None:
            raise ValueError(f"{path} holds a compressed model of the user's own class (no architecture name): "
                             "pass the dense model it was compressed from, load_compressed(path, model) (its "
                             "class with any weights; it is copied, not changed)")
        model, what = _build(arch), f"architecture {arch['name']!r}"
    else:
        what = f"the given {type(model).__name__}"
    out = _fill(model, doc["sketches"], doc["identities"], doc["state"], what, path)
    return out.to(device).eval()


def _architecture_record(model: nn.Module, architecture, num_classes) -> dict | None:
    if architecture is None:
        if num_classes is not None:
            raise ValueError("num_classes is only for a named architecture: pass architecture= too, or leave it out")
        return None
    check_choice("architecture", architecture, (*zoo.ARCHITECTURES, DIGITS))
    if architecture == DIGITS:
        if num_classes not in (None, 10):
            raise ValueError(f"num_classes: the digits net has 10 classes, got {num_classes}")
        return {"name": DIGITS, "num_classes": None}
    if num_classes is None:
        layers = sketchable_layers(model)
        if not layers:
            raise ValueError("model has no Conv2d or Linear layer: it is not a compressed zoo architecture")
        last = layers[-1][2]
        num_classes = last.weight_shape[0] if isinstance(last, SKETCHED_TYPES) else last.weight.shape[0]
    return {"name": architecture, "num_classes": check_positive_int("num_classes", num_classes)}


def _sketch_record(name: str, m: nn.Module, first_of: dict) -> dict:
    record = {"name": name, "type": type(m).__name__.replace("Sketched", ""), "k": m.k, "mode": m.mode,
              "seed": m.seed_value, "stream": m.stream_value, "weight_shape": list(m.weight_shape),
              "backend": m.backend, "precision": m.precision,
              "conv": ({f: _plain(getattr(m, f)) for f in _CONV_FIELDS} if isinstance(m, SketchedConv2d) else None),
              "tied_to": first_of.setdefault(id(m.coefficients), name),
              "bias_of": None if m.bias is None else first_of.setdefault(id(m.bias), name),
              "coefficients": m.coefficients.detach(), "bias": None if m.bias is None else m.bias.detach()}
    record["tied_to"] = None if record["tied_to"] == name else record["tied_to"]
    record["bias_of"] = None if record["bias_of"] == name else record["bias_of"]
    return record


def _plain(v):
    """A conv hyper-parameter as plain values: tuples become lists (torch.load's safe unpickler reads both)."""
    return list(v) if isinstance(v, tuple) else v


def _build(arch: dict) -> nn.Module:
    if arch["name"] == DIGITS:
        return zoo.DigitsNet()
    return zoo.build(arch["name"], arch["num_classes"])


def _read(path: Path) -> dict:
    """The file's dict, checked: format, version, sign spec, and the shape of every field."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the compressed.pt that save_compressed or "
                                "`stabkern compress --out DIR` wrote")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():  # a valid pickle naming classes (junk fails on an operand)
            raise ValueError(f"{path} pickles Python objects (a whole model?), which torch.load(weights_only=True) "
                             "refuses and a stabkern compressed model never holds: it is not a stabkern compressed "
                             "model; write one with stabkern.save_compressed") from None
        raise ValueError(f"{path} is not a readable torch file ({type(err).__name__}): not a stabkern compressed "
                         "model") from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on a file of another kind
        raise ValueError(f"{path} is not a readable torch file ({type(err).__name__}): not a stabkern compressed "
                         "model") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        hint = (" (it looks like a plain state_dict: reload it with model.load_state_dict, or compress again and "
                "save with stabkern.save_compressed)" if isinstance(doc, dict) and doc
                and all(isinstance(v, torch.Tensor) for v in doc.values()) else "")
        raise ValueError(f"{path} is not a stabkern compressed model (no format {FORMAT!r}){hint}")
    version = doc.get("version")
    if version != VERSION:
        raise ValueError(f"{path} is format {FORMAT!r} version {version!r}; this stabkern reads version {VERSION}: "
                         "load it with the stabkern that wrote it (its stabkern_version: "
                         f"{doc.get('stabkern_version')!r})")
    if doc.get("spec") != SPEC:
        raise ValueError(f"{path} was sketched with sign spec {doc.get('spec')!r}; this stabkern generates "
                         f"{SPEC!r}, so its weights would regenerate from other signs: load it with the stabkern "
                         f"that wrote it ({doc.get('stabkern_version')!r})")
    try:
        _check_fields(doc)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: a damaged stabkern compressed model ({err})") from None
    return doc


def _check_fields(doc: dict) -> None:
    arch = doc["architecture"]
    if arch is not None:
        check_choice("architecture", arch["name"], (*zoo.ARCHITECTURES, DIGITS))
        if arch["name"] != DIGITS:
            check_positive_int("num_classes", arch["num_classes"])
    if not isinstance(doc["state"], dict) or not all(isinstance(v, torch.Tensor) for v in doc["state"].values()):
        raise TypeError("state must map names to tensors")
    if not isinstance(doc["identities"], list) or not all(isinstance(n, str) for n in doc["identities"]):
        raise TypeError("identities must be a list of module names")
    if not isinstance(doc["sketches"], list):
        raise TypeError("sketches must be a list")
    earlier: set = set()
    for r in doc["sketches"]:
        name = r["name"]
        if not isinstance(name, str) or name in earlier:
            raise ValueError(f"sketch names must be distinct strings, got {name!r}")
        for key in ("tied_to", "bias_of"):
            if r[key] is not None and r[key] not in earlier:
                raise ValueError(f"{name}: {key} {r[key]!r} is not an earlier sketched layer")
        earlier.add(name)
        check_choice(f"{name}: type", r["type"], ("Conv2d", "Linear"))
        check_k(r["k"], f"{name}: k")
        check_mode(r["mode"])
        check_seed(r["seed"], f"{name}: seed")
        check_int(f"{name}: stream", r["stream"], 0, MAX_STREAM)
        check_choice(f"{name}: backend", r["backend"], BACKEND_NAMES)
        check_choice(f"{name}: precision", r["precision"], PRECISIONS)
        shape = r["weight_shape"]
        if not (isinstance(shape, list) and len(shape) == (4 if r["type"] == "Conv2d" else 2)):
            raise ValueError(f"{name}: weight_shape {shape!r} is not a {r['type']} weight's")
        for s in shape:
            check_positive_int(f"{name}: weight_shape", s)
        c = r["coefficients"]
        if not isinstance(c, torch.Tensor) or c.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: coefficients must be a float tensor")
        if r["bias"] is not None and not isinstance(r["bias"], torch.Tensor):
            raise TypeError(f"{name}: bias must be a tensor or None")
        if r["type"] == "Conv2d" and not (isinstance(r["conv"], dict) and all(f in r["conv"] for f in _CONV_FIELDS)):
            raise TypeError(f"{name}: conv must hold the Conv2d's {', '.join(_CONV_FIELDS)}")


def _sketch_from(r: dict) -> nn.Module:
    """An empty sketched layer of record r (coefficients zero), in the dtype of the saved coefficients."""
    kw = {"mode": r["mode"], "bias": r["bias"] is not None, "seed": r["seed"], "stream": r["stream"],
          "backend": r["backend"], "precision": r["precision"], "dtype": r["coefficients"].dtype,
          "allow_no_compression": True}
    shape = r["weight_shape"]
    if r["type"] == "Linear":
        return SketchedLinear(shape[1], shape[0], r["k"], **kw)
    conv = r["conv"]
    return SketchedConv2d(shape[1] * conv["groups"], shape[0], shape[2:], r["k"], stride=conv["stride"],
                          padding=conv["padding"], dilation=conv["dilation"], groups=conv["groups"],
                          padding_mode=conv["padding_mode"], **kw)


def _check_layer(r: dict, layer: nn.Module, sk: nn.Module, what: str) -> None:
    """ValueError unless the dense layer at r's name is of r's type and shape (and the Conv2d's hyper-parameters)."""
    types = (nn.Conv2d, SketchedConv2d) if r["type"] == "Conv2d" else (nn.Linear, SketchedLinear)
    if not isinstance(layer, types):
        raise ValueError(f"{r['name']} is a {type(layer).__name__} in {what}; the file holds a sketched {r['type']} "
                         "there")
    shape = tuple(layer.weight_shape if isinstance(layer, SKETCHED_TYPES) else layer.weight.shape)
    if shape != sk.weight_shape:
        raise ValueError(f"{r['name']}: weight {shape} in {what}, {sk.weight_shape} in the file")
    if r["type"] == "Conv2d":
        for f in _CONV_FIELDS:
            ours, theirs = getattr(sk, f), getattr(layer, f)
            if (tuple(theirs) if isinstance(theirs, (tuple, list)) else theirs) != ours:
                raise ValueError(f"{r['name']}: {f} {theirs!r} in {what}, {ours!r} in the file")


def _fill(model: nn.Module, sketches: list, identities: list, state: dict, what: str, path=None,
          check_only: bool = False) -> nn.Module:
    """A copy of `model` with the file's sketched layers and identities in place and its state loaded
    (check_only: the names, types and shapes checked, nothing loaded; for a model on the meta device).

    The copy is made with the replaced modules pre-set in deepcopy's memo (as compress_model does): their
    dense weights are never copied, and a module reachable under several names is replaced under all.
    """
    where = f"{path} does not fit {what}" if path is not None else f"the model does not fit {what}"
    fix = ("pass the dense model the file was compressed from (same class and constructor arguments)"
           if path is not None else "check the architecture name (and num_classes)")
    memo: dict = {}
    built: dict[str, nn.Module] = {}
    full = dict(state)
    try:
        for r in sketches:
            try:
                layer = model.get_submodule(r["name"])
            except AttributeError:
                raise ValueError(f"it has no layer {r['name']!r}, which the file sketches") from None
            sk = _sketch_from(r)
            _check_layer(r, layer, sk, what)
            if r["tied_to"] is not None:  # one sketch for tied layers, as compress_model made it
                first = built[r["tied_to"]]
                sk.coefficients, sk.seed, sk.stream = first.coefficients, first.seed, first.stream
            if r["bias_of"] is not None:
                sk.bias = built[r["bias_of"]].bias
            _carry_hooks(layer, sk)
            memo[id(layer)] = built[r["name"]] = sk
            prefix = f"{r['name']}." if r["name"] else ""
            full[prefix + "coefficients"] = r["coefficients"]
            full[prefix + "seed"] = torch.tensor([r["seed"] & 0xFFFFFFFF, r["seed"] >> 32], dtype=torch.int64)
            full[prefix + "stream"] = torch.tensor(r["stream"], dtype=torch.int64)
            if r["bias"] is not None:
                full[prefix + "bias"] = r["bias"]
        for name in identities:
            try:
                m = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"it has no module {name!r}, which is an Identity in the file") from None
            memo.setdefault(id(m), nn.Identity())
        out = copy.deepcopy(model, memo)
        _load_state(out, full, check_only)
    except ValueError as err:
        raise ValueError(f"{where}: {err}; {fix}") from None
    return out


def _load_state(model: nn.Module, full: dict, check_only: bool = False) -> None:
    """Strict load of `full` into model, each float entry taking the file's dtype (a float64 model stays float64);
    ValueError naming the entries that are missing, extra or of another shape."""
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in full]
    unexpected = [k for k in full if k not in own]
    wrong = [f"{k} {tuple(own[k].shape)} here, {tuple(full[k].shape)} in the file" for k in own
             if k in full and own[k].shape != full[k].shape]
    if missing or unexpected or wrong:
        few = lambda keys: ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")  # noqa: E731
        parts = [f"missing entries {few(missing)}" if missing else "",
                 f"entries it does not have {few(unexpected)}" if unexpected else "",
                 f"other shapes: {few(wrong)}" if wrong else ""]
        raise ValueError("; ".join(p for p in parts if p))
    if check_only:
        return
    with torch.no_grad():
        for key, t in own.items():
            if t.dtype != full[key].dtype and t.dtype.is_floating_point and full[key].dtype.is_floating_point:
                t.data = t.data.to(full[key].dtype)
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as err:  # the sketched layers' own checks (seed, stream, coefficients) and dtype copies
        raise ValueError(str(err).strip().replace("\n", " ")) from None


__all__ = ["FORMAT", "VERSION", "load_compressed", "save_compressed"]
