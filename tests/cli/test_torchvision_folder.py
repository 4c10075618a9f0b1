"""The command line on a torchvision architecture and a data folder in a dataset's own format: a ResNet-18
state_dict (torchvision's keys, stabkern.zoo's definition where torchvision does not import) and a CIFAR-10
folder of binary batches, both written here; nothing is downloaded. `stabkern card` on the same inputs takes
minutes (measure on 21 layers), too long for CI; here the CLI's io path and per-layer compression run."""

import json
import subprocess
import sys

import numpy as np
import torch

from stabkern.zoo import build


def test_compress_resnet18_on_a_cifar_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    records = np.zeros((6, 3073), dtype=np.uint8)
    records[:, 0] = rng.integers(0, 10, 6)
    records[:, 1:] = rng.integers(0, 256, (6, 3072))
    records.tofile(folder / "test_batch.bin")
    torch.manual_seed(0)
    torch.save(build("resnet18", num_classes=10).state_dict(), tmp_path / "resnet18.pt")
    run = subprocess.run([sys.executable, "-m", "stabkern", "compress", f"resnet18:{tmp_path / 'resnet18.pt'}",
                          "--data", str(folder), "--limit", "4", "--k", "32", "--mode", "filter", "--json",
                          "--quiet", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)["compression"]
    assert doc["format"] == "stabkern-compression-report-v1"
    names = [layer["name"] for layer in doc["layers"]]
    assert "layer2.0.downsample.0" in names and "fc" in names and len(names) == 21  # torchvision's module names
    for layer in doc["layers"]:
        err = layer["output_error"]
        assert err["samples"] == 4 and err["mean"] > 0  # measured on the folder's 4 images
    assert (tmp_path / "out" / "compression.json").is_file()
    saved = torch.load(tmp_path / "out" / "compressed.pt", weights_only=True)  # reloads with no model at hand
    assert saved["architecture"] == {"name": "resnet18", "num_classes": 10}
    assert [r["name"] for r in saved["sketches"]] == names and {r["k"] for r in saved["sketches"]} == {32}
