"""Fixtures of the conformance suite: the representative nets of helpers/conformance_nets.py and inputs."""

import pytest
from torch import nn

from helpers.conformance_nets import ARCHS, inputs_of, net_of


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def net(arch) -> nn.Module:
    """The representative (shared by the tests of one session: every test leaves it unchanged, which
    test_compress checks for the calls that copy it)."""
    return net_of(arch)


@pytest.fixture
def inputs() :
    return inputs_of()
