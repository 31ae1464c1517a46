"""Record what diffusionkit does today, as regression data for the redesigned core.

Run once, with the code *before* a redesign (this file was run at commit 5723b20, the last
commit before the sampling core was split into layers)::

    python tests/regression/make_data.py

It writes, under ``tests/regression/data/``:

* ``<model>/``: format-1 checkpoints saved by ``save_pretrained`` (tiny U-Nets, a few KB each),
  one per combination of schedule, sampler and prediction type that users have saved;
* ``cases.json`` and ``expected.safetensors``: calls of ``reverse_sample``, ``loss``,
  ``forward_sample``, ``predict_eps`` and ``predict_x0`` on those models and on an exact
  Gaussian denoiser, with their results (samples, whole trajectories, losses), plus the CPU
  capability they were computed with.

``tests/test_regression.py`` replays every case on the current code. Do not re-run this
script after the redesign: its output would then describe the new code, not the old one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: oracles.py

from oracles import GaussianOracle  # noqa: E402

from diffusionkit import (  # noqa: E402
    CosineSchedule,
    DDIMSampler,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    MinSNRWeighting,
    PosteriorMeanSampler,
    SigmoidSchedule,
    UNet,
    ZeroTerminalSNRSchedule,
)

DATA = HERE / "data"
SHAPE = (2, 1, 8, 8)


def tiny_unet(seed: int, **kwargs: Any) -> UNet:
    torch.manual_seed(seed)
    net = UNet(
        in_channels=1, dim=4, dim_mults=(1, 2), attns=(False, True), n_blocks=1, groups=2, **kwargs
    )
    with torch.no_grad():  # weights big enough that the network's output is not ~0
        for p in net.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return net


def models() -> dict[str, DenoiseDiffusion]:
    """The saved models: every schedule, sampler and prediction type, as format 1 holds them."""
    return {
        # what `diffusionkit train` saved: cosine, eps, DDPM with x0 clipping
        "cli-cosine-eps": DenoiseDiffusion(
            tiny_unet(0), CosineSchedule(40), DDPMSampler(clip_x0=True), "eps"
        ),
        "linear-eps-ddpm": DenoiseDiffusion(tiny_unet(1), LinearSchedule(30), None, "eps"),
        "linear-eps-ddpm-beta": DenoiseDiffusion(
            tiny_unet(2), LinearSchedule(25, scale_with_timesteps=False), DDPMSampler("beta")
        ),
        "cosine-v-ddim-minsnr": DenoiseDiffusion(
            tiny_unet(3), CosineSchedule(30), DDIMSampler(eta=0.5), "v", MinSNRWeighting(5.0)
        ),
        "sigmoid-x0-posterior": DenoiseDiffusion(
            tiny_unet(4), SigmoidSchedule(25), PosteriorMeanSampler(clip_x0=False), "x0"
        ),
        "zsnr-v-ddim-clip": DenoiseDiffusion(
            tiny_unet(5),
            ZeroTerminalSNRSchedule(LinearSchedule(24)),
            DDIMSampler(clip_x0=True),
            "v",
        ),
        "class-cond-eps": DenoiseDiffusion(
            tiny_unet(6, num_classes=3, cond_channels=2), LinearSchedule(24), None, "eps"
        ),
    }


class Recorder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.cases: list[dict[str, Any]] = []

    def tensor(self, name: str, value: torch.Tensor) -> str:
        assert name not in self.tensors, name
        self.tensors[name] = value.detach().cpu().contiguous().clone()
        return name

    def add(self, case: dict[str, Any]) -> None:
        assert all(c["name"] != case["name"] for c in self.cases), case["name"]
        self.cases.append(case)


def gen(spec: Any) -> Any:
    """A generator spec: an int seed, or a list of seeds (one generator per sample)."""
    if isinstance(spec, list):
        return [torch.Generator().manual_seed(s) for s in spec]
    return torch.Generator().manual_seed(spec)


def build_kwargs(spec: dict[str, Any], inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    kwargs = dict(spec)
    if "generator" in kwargs:
        kwargs["generator"] = gen(kwargs["generator"])
    for key, value in list(kwargs.items()):
        if isinstance(value, str) and value.startswith("@"):
            kwargs[key] = inputs[value[1:]]
    return kwargs


def sampling_calls(name: str, model: DenoiseDiffusion) -> list[dict[str, Any]]:
    """reverse_sample calls for one model; '@key' refers to a shared input tensor."""
    calls: list[dict[str, Any]] = [
        {"generator": 0},
        {"generator": 1, "steps": 7},
        {"generator": 2, "steps": 5, "spacing": "leading"},
        {"generator": 3, "steps": 6, "spacing": "linspace", "clip": True},
        {"generator": [10, 11], "steps": 8},
        {"generator": 4, "sampler": "ddim", "steps": 6},
        {"generator": 5, "sampler": "posterior-mean", "steps": 9},
        {"generator": 6, "sampler": "ddpm"},
        {"generator": 7, "return_intermediates": True, "steps": 10},
    ]
    if name != "zsnr-v-ddim-clip":  # img2img, end_step, inpainting
        calls += [
            {"generator": 8, "x_init": "@x_init", "start_step": 12},
            {"generator": 9, "x_init": "@x_init", "start_step": 15, "steps": 4},
            {"generator": 13, "steps": 6, "end_step": 3, "return_intermediates": True},
            {"generator": 14, "x_known": "@x_known", "mask": "@mask", "steps": 8},
            {
                "generator": 15,
                "x_known": "@x_known",
                "mask": "@mask",
                "steps": 5,
                "resample_jumps": 2,
                "return_intermediates": True,
            },
            {"generator": 16, "sampler": "ddim", "x_known": "@x_known", "mask": "@mask1"},
        ]
    else:
        calls += [
            {"generator": 8, "sampler": "ddim", "steps": 4, "return_intermediates": True},
            {"generator": 9, "x_init": "@x_init", "start_step": 10, "steps": 5},
        ]
    if name == "class-cond-eps":
        calls += [
            {"generator": 20, "labels": "@labels", "cond": "@cond", "steps": 6},
            {"generator": 21, "labels": "@labels", "guidance_scale": 3.0, "steps": 6},
            {"generator": 22, "cond": "@cond", "guidance_scale": 0.0, "steps": 5},
            {
                "generator": 23,
                "labels": 2,
                "cond": "@cond",
                "guidance_scale": 2.5,
                "sampler": "ddim",
                "return_intermediates": True,
                "steps": 5,
            },
        ]
    return calls


def record_model_cases(rec: Recorder, name: str, model: DenoiseDiffusion) -> None:
    model.eval()
    for k, spec in enumerate(sampling_calls(name, model)):
        kwargs = build_kwargs(spec, INPUTS)
        shape = None if ("x_init" in kwargs or "x_known" in kwargs) else SHAPE
        out = model.reverse_sample(shape, progress=False, **kwargs)
        case: dict[str, Any] = {
            "name": f"{name}/sample-{k}",
            "model": name,
            "call": "reverse_sample",
        }
        case["kwargs"] = spec
        key = f"{name}/sample-{k}"
        if spec.get("return_intermediates"):
            case["result"] = {
                "samples": rec.tensor(f"{key}/samples", out.samples),
                "x_t": rec.tensor(f"{key}/x_t", out.x_t),
                "x0_pred": rec.tensor(f"{key}/x0_pred", out.x0_pred),
                "timesteps": out.timesteps.tolist(),
            }
        else:
            case["result"] = {"samples": rec.tensor(f"{key}/samples", out)}
        rec.add(case)
    # the training objective and the closed-form forward process
    model.train()
    loss_specs: list[dict[str, Any]] = [
        {"generator": 30},
        {"generator": 31, "t": "@t"},
        {"generator": [40, 41], "t": "@t", "noise": "@noise"},
    ]
    if name == "class-cond-eps":
        loss_specs += [
            {"generator": 32, "labels": "@labels", "cond": "@cond", "cond_drop_prob": 0.5},
            {"generator": [43, 44], "t": "@t", "labels": "@labels", "cond_drop_prob": 0.3},
        ]
    for k, spec in enumerate(loss_specs):
        with torch.no_grad():
            loss = model.loss(INPUTS["x0"], **build_kwargs(spec, INPUTS))
        key = f"{name}/loss-{k}"
        rec.add(
            {
                "name": key,
                "model": name,
                "call": "loss",
                "kwargs": spec,
                "result": {"loss": rec.tensor(key, loss)},
            }
        )
    model.eval()
    key = f"{name}/forward"
    x_t, noise = model.forward_sample(INPUTS["x0"], INPUTS["t"], generator=gen(50))
    rec.add(
        {
            "name": key,
            "model": name,
            "call": "forward_sample",
            "kwargs": {"generator": 50, "t": "@t"},
            "result": {
                "x_t": rec.tensor(f"{key}/x_t", x_t),
                "noise": rec.tensor(f"{key}/noise", noise),
            },
        }
    )
    extra = {"labels": "@labels", "cond": "@cond"} if name == "class-cond-eps" else {}
    with torch.no_grad():
        for call in ("predict_eps", "predict_x0"):
            key = f"{name}/{call}"
            out = getattr(model, call)(INPUTS["x_t"], INPUTS["t"], **build_kwargs(extra, INPUTS))
            rec.add(
                {
                    "name": key,
                    "model": name,
                    "call": call,
                    "kwargs": {"x_t": "@x_t", "t": "@t", **extra},
                    "result": {"out": rec.tensor(key, out)},
                }
            )


def oracle_cases(rec: Recorder) -> None:
    """Trajectories with the exact Gaussian denoiser (elementwise float ops only)."""
    configs = {
        "oracle-linear-eps": (LinearSchedule(50), "eps"),
        "oracle-cosine-x0": (CosineSchedule(40), "x0"),
        "oracle-sigmoid-v": (SigmoidSchedule(30), "v"),
    }
    samplers: dict[str, Any] = {
        "ddpm": DDPMSampler(),
        "ddpm-beta-clip": DDPMSampler("beta", clip_x0=True),
        "ddim": DDIMSampler(),
        "ddim-eta-clip": DDIMSampler(0.7, clip_x0=True),
        "posterior-mean": PosteriorMeanSampler(),
        "posterior-mean-det": PosteriorMeanSampler(clip_x0=False, stochastic=False),
    }
    for cname, (schedule, prediction) in configs.items():
        oracle = GaussianOracle(schedule, mean=0.2, std=0.5, prediction=prediction)
        model = DenoiseDiffusion(oracle, schedule, prediction=prediction)
        for sname, sampler in samplers.items():
            for steps in (None, 9):
                key = f"{cname}/{sname}/{steps}"
                traj = model.reverse_sample(
                    (2, 1, 4, 4),
                    generator=torch.Generator().manual_seed(len(rec.cases)),
                    sampler=sampler,
                    steps=steps,
                    progress=False,
                    return_intermediates=True,
                )
                rec.add(
                    {
                        "name": key,
                        "oracle": {
                            "schedule": cname,
                            "mean": 0.2,
                            "std": 0.5,
                            "prediction": prediction,
                        },
                        "sampler": {"class": type(sampler).__name__, "config": sampler.config()},
                        "call": "reverse_sample",
                        "kwargs": {
                            "generator": len(rec.cases),
                            "steps": steps,
                            "return_intermediates": True,
                        },
                        "shape": [2, 1, 4, 4],
                        "result": {
                            "samples": rec.tensor(f"{key}/samples", traj.samples),
                            "x_t": rec.tensor(f"{key}/x_t", traj.x_t),
                            "x0_pred": rec.tensor(f"{key}/x0_pred", traj.x0_pred),
                            "timesteps": traj.timesteps.tolist(),
                        },
                    }
                )


def shared_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x0 = (torch.rand(SHAPE, generator=g) * 2 - 1).clamp(-1, 1)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1.0
    return {
        "x0": x0,
        "x_init": (torch.rand(SHAPE, generator=g) * 2 - 1),
        "x_known": (torch.rand(SHAPE, generator=g) * 2 - 1),
        "mask": mask,
        "mask1": (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float(),
        "labels": torch.tensor([2, -1]),
        "cond": torch.randn(2, 2, 8, 8, generator=g),
        "t": torch.tensor([0, 19]),
        "noise": torch.randn(SHAPE, generator=g),
        "x_t": torch.randn(SHAPE, generator=g),
    }


INPUTS = shared_inputs()


def main() -> None:
    torch.set_num_threads(1)
    DATA.mkdir(parents=True, exist_ok=True)
    rec = Recorder()
    for name, tensor in INPUTS.items():
        rec.tensor(f"inputs/{name}", tensor)
    saved = models()
    for name, model in saved.items():
        ema = {k: v + 0.01 for k, v in model.net.state_dict().items()}
        folder = DATA / name
        model.save_pretrained(folder, ema=ema if name == "cli-cosine-eps" else None)
        loaded = DenoiseDiffusion.from_pretrained(folder)  # what a user gets back (EMA if any)
        record_model_cases(rec, name, loaded)
    # a network saved alone (kind "network")
    tiny_unet(7).save_pretrained(DATA / "unet-only")
    oracle_cases(rec)
    meta = {
        "written_by_commit": "5723b20",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": 1,
        "cases": rec.cases,
    }
    (DATA / "cases.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    save_file(rec.tensors, str(DATA / "expected.safetensors"))
    print(f"{len(rec.cases)} cases, {len(rec.tensors)} tensors")


if __name__ == "__main__":
    main()
