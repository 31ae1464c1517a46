"""Everything that worked before the sampling core was split into layers gives the same results.

``tests/regression/make_data.py`` recorded, with the code of commit 5723b20, format-1
checkpoints and the results of ``reverse_sample`` (samples and whole trajectories, with every
sampler, respacing, image-to-image, ``end_step``, inpainting with resampling, guidance,
per-sample generators), ``loss``, ``forward_sample`` and the predictions. Each case is replayed
here on the current code, loading the checkpoints with today's ``from_pretrained``.

Results must be bit-identical on a CPU with the capability they were recorded on (torch picks
its vector kernels by capability, and fused multiply-adds round differently from separate
ones); elsewhere they must agree to float32 rounding (the assertion message says which).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from oracles import GaussianOracle
from safetensors.torch import load_file

from diffusionkit import (
    CosineSchedule,
    DenoiseDiffusion,
    LinearSchedule,
    SigmoidSchedule,
    UNet,
    get_sampler,
)

DATA = Path(__file__).parent / "regression" / "data"
META = json.loads((DATA / "cases.json").read_text(encoding="utf-8"))
EXPECTED = load_file(str(DATA / "expected.safetensors"))
INPUTS = {k.removeprefix("inputs/"): v for k, v in EXPECTED.items() if k.startswith("inputs/")}
SAME_CPU = torch.backends.cpu.get_cpu_capability() == META["cpu_capability"]
ORACLE_SCHEDULES = {
    "oracle-linear-eps": LinearSchedule(50),
    "oracle-cosine-x0": CosineSchedule(40),
    "oracle-sigmoid-v": SigmoidSchedule(30),
}


@pytest.fixture(autouse=True)
def one_thread():
    """The data was recorded with one thread: replay with one (reductions may split by thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _generator(spec: Any) -> Any:
    if isinstance(spec, list):
        return [torch.Generator().manual_seed(s) for s in spec]
    return torch.Generator().manual_seed(spec)


def _kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec)
    if "generator" in kwargs:
        kwargs["generator"] = _generator(kwargs["generator"])
    for key, value in list(kwargs.items()):
        if isinstance(value, str) and value.startswith("@"):
            kwargs[key] = INPUTS[value[1:]]
    return kwargs


def _same(got: torch.Tensor, name: str) -> None:
    want = EXPECTED[name]
    if SAME_CPU:
        assert torch.equal(got.cpu(), want), (
            f"{name}: not bit-identical to the recording (max difference "
            f"{(got.cpu() - want).abs().max().item():.3g})"
        )
    else:  # another kernel family: float32 rounding only
        torch.testing.assert_close(
            got.cpu(),
            want,
            atol=1e-5,
            rtol=1e-4,
            msg=lambda m: (
                f"{name} (recorded on {META['cpu_capability']}, here "
                f"{torch.backends.cpu.get_cpu_capability()}): {m}"
            ),
        )


_MODELS: dict[str, DenoiseDiffusion] = {}


def _model(name: str) -> DenoiseDiffusion:
    if name not in _MODELS:
        _MODELS[name] = DenoiseDiffusion.from_pretrained(DATA / name)
    return _MODELS[name]


def _check_result(result: dict[str, Any], out: Any) -> None:
    if "timesteps" in result:
        assert out.timesteps.tolist() == result["timesteps"]
        for field in ("samples", "x_t", "x0_pred"):
            _same(getattr(out, field), result[field])
    else:
        _same(out, result["samples"])


MODEL_CASES = [c for c in META["cases"] if "model" in c]
ORACLE_CASES = [c for c in META["cases"] if "oracle" in c]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c["name"] for c in MODEL_CASES])
def test_saved_model_case(case):
    model = _model(case["model"])
    kwargs = _kwargs(case["kwargs"])
    call, result = case["call"], case["result"]
    if call == "reverse_sample":
        shape = None if ("x_init" in kwargs or "x_known" in kwargs) else (2, 1, 8, 8)
        _check_result(result, model.reverse_sample(shape, progress=False, **kwargs))
    elif call == "loss":
        model.train()
        try:
            with torch.no_grad():
                loss = model.loss(INPUTS["x0"], **kwargs)
        finally:
            model.eval()
        _same(loss, result["loss"])
    elif call == "forward_sample":
        x_t, noise = model.forward_sample(INPUTS["x0"], **kwargs)
        _same(x_t, result["x_t"])
        _same(noise, result["noise"])
    else:
        with torch.no_grad():
            _same(getattr(model, call)(**kwargs), result["out"])


@pytest.mark.parametrize("case", ORACLE_CASES, ids=[c["name"] for c in ORACLE_CASES])
def test_exact_denoiser_trajectory(case):
    spec = case["oracle"]
    schedule = ORACLE_SCHEDULES[spec["schedule"]]
    oracle = GaussianOracle(schedule, spec["mean"], spec["std"], spec["prediction"])
    model = DenoiseDiffusion(oracle, schedule, prediction=spec["prediction"])
    sampler = get_sampler(case["sampler"]["class"], **case["sampler"]["config"])
    out = model.reverse_sample(
        tuple(case["shape"]), sampler=sampler, progress=False, **_kwargs(case["kwargs"])
    )
    _check_result(case["result"], out)


def test_format_1_checkpoints_load_as_they_were_saved():
    """Every recorded checkpoint loads, EMA weights by default, the network alone too."""
    model = _model("cli-cosine-eps")
    raw = DenoiseDiffusion.from_pretrained(DATA / "cli-cosine-eps", use_ema=False)
    for (name, ema), raw_tensor in zip(
        model.net.state_dict().items(), raw.net.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ema, raw_tensor + 0.01, msg=name)
    net = UNet.from_pretrained(DATA / "unet-only")
    assert isinstance(net, UNet) and net.dim == 4
    assert isinstance(UNet.from_pretrained(DATA / "class-cond-eps"), UNet)
