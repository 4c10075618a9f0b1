"""Small inputs for the command-line tests: an untrained DigitsNet's weights and .npz data files.

Labels are the net's own predictions, so every margin is positive and the dense accuracy is 1.
"""

import numpy as np
import pytest
import torch

from stabkern.zoo.digits import DigitsNet


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-inputs")
    torch.manual_seed(0)
    net = DigitsNet().eval()
    torch.save(net.state_dict(), root / "net.pt")
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    np.savez(root / "data.npz", x=x.numpy(), y=y.numpy())
    return {"root": root, "model": f"digits:{root / 'net.pt'}", "data": str(root / "data.npz"), "x": x, "y": y}
