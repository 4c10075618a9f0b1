"""torchvision's state_dict keys, shapes, parameter counts and outputs, pinned for zoo architectures.

torchvision does not import beside a CPU torch on these machines (its wheels are CUDA builds), so the
facts a zoo definition must match are written down once, from torchvision itself, into
`torchvision_pinned.json` by `python tests/zoo/torchvision_pinned.py TORCHVISION_SITE` (a folder where
a torchvision wheel is unpacked, e.g. `pip install --no-deps --target DIR torchvision==0.28.0`).

Per architecture the file holds: `params` (1000 classes), `state_dict` (key -> shape, 1000 classes) and
`logits` (eval-mode output for `pinned_input()` with `deterministic_state_dict` weights, 10 classes).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys

import torch

PINNED = pathlib.Path(__file__).with_name("torchvision_pinned.json")
LOGIT_CLASSES = 10


def pinned_input() -> torch.Tensor:
    """(2, 3, 64, 64) float32 input, the same on every machine."""
    g = torch.Generator().manual_seed(1234)
    return torch.randn(2, 3, 64, 64, generator=g)


def deterministic_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights that depend only on the state_dict's keys and shapes, so two definitions with the same keys
    get the same weights: weights ~ N(0, 1/fan_in), biases small, BN statistics positive."""
    out = {}
    for i, (key, t) in enumerate(sorted(model.state_dict().items())):
        g = torch.Generator().manual_seed(i)
        if not t.is_floating_point():
            out[key] = torch.zeros_like(t)
        elif key.endswith("running_var"):
            out[key] = 1.0 + 0.1 * torch.rand(t.shape, generator=g)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(t.shape, generator=g)
        elif t.dim() >= 2:
            fan_in = math.prod(t.shape[1:])
            out[key] = torch.randn(t.shape, generator=g) / math.sqrt(fan_in)
        elif key.endswith("weight") or key.endswith("layer_scale"):
            out[key] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[key] = 0.1 * torch.randn(t.shape, generator=g)
    return out


ARCHITECTURES = ("densenet121", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
                 "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1")


def _pin(models) -> dict:
    facts = {}
    for name in ARCHITECTURES:
        full = getattr(models, name)(weights=None)
        small = getattr(models, name)(weights=None, num_classes=LOGIT_CLASSES).eval()
        small.load_state_dict(deterministic_state_dict(small))
        with torch.no_grad():
            logits = small(pinned_input()).double()
        facts[name] = {"params": sum(p.numel() for p in full.parameters()),
                       "state_dict": {k: list(v.shape) for k, v in full.state_dict().items()},
                       "logits": logits.tolist()}
    return facts


def load() -> dict:
    return json.loads(PINNED.read_text())


if __name__ == "__main__":
    # torchvision's CUDA wheel checks for its own C++ ops at import; declaring the two it looks up lets the
    # pure-Python model definitions import (nothing here runs those ops).
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    sys.path.insert(0, sys.argv[1])
    import torchvision
    import torchvision.models as tv_models

    torch.set_num_threads(1)
    facts = {"torchvision": torchvision.__version__, "torch": torch.__version__, "architectures": _pin(tv_models)}
    PINNED.write_text(json.dumps(facts, indent=0) + "\n")
    print(f"wrote {PINNED} ({PINNED.stat().st_size} bytes)")
