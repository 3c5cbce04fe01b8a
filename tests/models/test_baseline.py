"""The regression baseline: H&E in [-1, 1] from any number of input channels."""

from __future__ import annotations

import pytest
import torch

from stainldm.models.baseline import BaselineConfig, BaselineUNet

SMALL = BaselineConfig(features=(4, 4, 8, 8, 16, 4))


@pytest.mark.parametrize("in_channels", [1, 2, 3])
def test_baseline_maps_any_input_channels_to_rgb_in_minus_one_one(in_channels):
    torch.manual_seed(0)
    net = BaselineUNet(SMALL, in_channels=in_channels)
    x = torch.randn(2, in_channels, 32, 32) * 20  # far outside [-1, 1]: the tanh head still bounds it
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 32, 32)
    assert float(out.min()) >= -1 and float(out.max()) <= 1 and float(out.abs().max()) > 0.1


def test_baseline_l1_step_reduces_the_loss():
    torch.manual_seed(0)
    net = BaselineUNet(SMALL, in_channels=2)
    x, y = torch.randn(2, 2, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (net(x) - y).abs().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
