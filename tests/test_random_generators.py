"""Finding 9: ``generator=`` given something other than torch generators says what to pass.

``generator=[1, 2]`` (seeds where generators belong) used to fail deep inside with
``AttributeError: 'int' object has no attribute 'device'``.
"""

from __future__ import annotations

import pytest
import torch

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit._random import randn


@pytest.mark.parametrize(
    ("generator", "needles"),
    [
        ([1, 2], ["generator[0] is 1 (int)", "torch.Generator().manual_seed(s)"]),
        (7, ["got 7 (int)", "torch.Generator().manual_seed(seed)"]),
        ("seed", ["got 'seed' (str)"]),
    ],
)
def test_seeds_instead_of_generators_are_a_clear_type_error(generator, needles):
    with pytest.raises(TypeError) as info:
        randn((2, 3), generator)
    for needle in needles:
        assert needle in str(info.value)


def test_the_check_reaches_sampling():
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4)
    model = DenoiseDiffusion(net, LinearSchedule(timesteps=50))
    with pytest.raises(TypeError, match=r"generator\[0\] is 1 \(int\)"):
        model.reverse_sample((2, 1, 8, 8), generator=[1, 2], steps=2)
    per_sample = [torch.Generator().manual_seed(s) for s in (1, 2)]
    assert randn((2, 3), per_sample).shape == (2, 3)  # the valid forms still work
    assert randn((2, 3), torch.Generator().manual_seed(0)).shape == (2, 3)
