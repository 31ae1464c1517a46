"""Two processes under torchrun (gloo, CPU) train the same model as one process.

The worker script below runs once under ``torchrun --nproc_per_node=2`` (a subprocess, on a
free port of 127.0.0.1) and once in this process; with the same global batch the weights must
agree to float tolerance, and a single process must be able to resume the 2-process run.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusionkit.training import list_checkpoints, read_metrics

WORKER = """
import sys

import torch
from safetensors.torch import save_file

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.training import Trainer

out, steps, grad_accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resume = sys.argv[4] if len(sys.argv) > 4 else None
torch.manual_seed(0)
net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4, n_blocks=1,
           mid_attn=False)
model = DenoiseDiffusion(net, LinearSchedule(timesteps=50))
data = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
trainer = Trainer(model, data, batch_size=8, lr=5e-3, steps=steps, grad_accum=grad_accum,
                  out_dir=out, checkpoint_every=2, log_every=1, ema_decay=0.9,
                  progress=False, sample_every=0, export=False)
if resume:
    trainer.resume(resume)
trainer.train()
if trainer.dist.is_main:
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    save_file(tensors, f"{out}/final.safetensors")
print(f"worker rank {trainer.dist.rank} of {trainer.dist.world_size} done", flush=True)
trainer.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_here(script: Path, *args: str) -> None:
    argv = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow  # starts torchrun and two Python processes: about 10-40 s
def test_two_processes_match_one_and_resume_on_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ddp_out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(script), str(ddp_out), "4", "2",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    assert "worker rank 0 of 2 done" in done.stdout and "worker rank 1 of 2 done" in done.stdout

    # one process, same global batch (8), no accumulation
    single_out = tmp_path / "single"
    _run_here(script, str(single_out), "4", "1")
    ddp, single = (
        load_file(ddp_out / "final.safetensors"),
        load_file(single_out / "final.safetensors"),
    )
    _assert_close(ddp, single)
    torch.manual_seed(0)  # the weights moved: the comparison is not between two initialisations
    assert any(not torch.allclose(v, single[k]) for k, v in _init_state().items())

    # only rank 0 wrote: one metrics record per step, checkpoints at 2 and 4
    assert [r["step"] for r in read_metrics(ddp_out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(ddp_out / "checkpoints")] == [
        "step-00000002",
        "step-00000004",
    ]

    # resume the 2-process run's step-2 checkpoint on one process
    resumed_out = tmp_path / "resumed"
    _run_here(script, str(resumed_out), "4", "1", str(ddp_out / "checkpoints" / "step-00000002"))
    _assert_close(ddp, load_file(resumed_out / "final.safetensors"))


def _init_state() -> dict[str, torch.Tensor]:
    from diffusionkit import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4, n_blocks=1,
               mid_attn=False)  # fmt: skip
    return {f"net.{k}": v for k, v in net.state_dict().items()}
