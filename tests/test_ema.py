"""EMA of the weights: the update follows its documented formula exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffusionkit.training import EMA


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    return net


def test_decay_warmup_values():
    ema = EMA(_net(0), decay=0.999)
    # d_n = min(decay, (1 + n) / (10 + n))
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(90) == pytest.approx(91 / 100)
    assert ema.decay_at(100_000) == 0.999
    no_warmup = EMA(_net(0), decay=0.99, warmup=False)
    assert no_warmup.decay_at(0) == no_warmup.decay_at(5000) == 0.99


def test_update_matches_formula_over_several_steps():
    model = _net(0)
    ema = EMA(model, decay=0.5)
    expected = {k: v.detach().clone().double() for k, v in model.named_parameters()}
    for n in range(6):
        with torch.no_grad():  # new "trained" weights
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = ema.update(model)
        want_d = min(0.5, (1 + n) / (10 + n))
        assert d == pytest.approx(want_d)
        for name, p in model.named_parameters():
            expected[name] = want_d * expected[name] + (1 - want_d) * p.detach().double()
    assert ema.num_updates == 6
    for name, e in ema.module.named_parameters():
        torch.testing.assert_close(e.double(), expected[name], rtol=1e-6, atol=1e-6)
        # and it really averaged: it differs from the current weights
        assert not torch.allclose(e, dict(model.named_parameters())[name])


def test_buffers_are_copied_not_averaged_and_model_untouched():
    model = _net(1)
    ema = EMA(model, decay=0.9)
    model.train()
    model(torch.randn(8, 3))  # updates BatchNorm running stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    bn_model, bn_ema = model[1], ema.module[1]
    assert torch.equal(bn_ema.running_mean, bn_model.running_mean)
    assert torch.equal(bn_ema.num_batches_tracked, bn_model.num_batches_tracked)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"EMA update changed the model's {k}"
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_state_dict_round_trip_and_errors():
    model = _net(2)
    ema = EMA(model, decay=0.9)
    ema.update(model)
    other = EMA(_net(3), decay=0.9)
    other.load_state_dict(ema.state_dict(), ema.num_updates)
    assert other.num_updates == 1
    for a, b in zip(other.module.parameters(), ema.module.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError):
        other.load_state_dict({"nope": torch.zeros(1)}, 0)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        EMA("model", decay=0.9)  # type: ignore[arg-type]
