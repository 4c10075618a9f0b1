"""Every architecture in stabkern.zoo has a representative in the conformance suite."""

from helpers.conformance_nets import REPRESENTATIVES

from stabkern import zoo

# architecture -> the family whose representative runs its code (members differ only in depth / width
# lists and BatchNorm on or off)
MEMBERS = {**{name: "vgg" for name in zoo.ARCHITECTURES if name.startswith("vgg")},
           "resnet18": "resnet-basic", "resnet34": "resnet-basic", "resnet50": "resnet-bottleneck",
           "resnet101": "resnet-bottleneck", "resnet152": "resnet-bottleneck", "resnet18_gn": "resnet-groupnorm",
           "densenet121": "densenet", "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3",
           "efficientnet_b0": "efficientnet", "convnext_tiny": "convnext", "regnet_y_400mf": "regnet",
           "shufflenet_v2_x1_0": "shufflenet", "squeezenet1_1": "squeezenet"}


def test_every_zoo_architecture_has_a_representative():
    assert set(MEMBERS) == set(zoo.ARCHITECTURES), "a zoo architecture is missing from tests/conformance"
    assert set(MEMBERS.values()) == set(REPRESENTATIVES)
    for family, arch in REPRESENTATIVES.items():
        assert MEMBERS[arch] == family
