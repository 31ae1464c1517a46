"""A conditional model (class labels, conditioning images, condition dropout) trained by two
processes under torchrun matches one process (issue 14): the loss's dropout is drawn per
example, so how the batch is split does not change which conditions are dropped."""

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

WORKER = """
import sys

import torch
from safetensors.torch import save_file

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data import TensorImageDataset
from diffusionkit.training import Trainer

out, grad_accum = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4, n_blocks=1,
           mid_attn=False, num_classes=3, cond_channels=1)
model = DenoiseDiffusion(net, LinearSchedule(timesteps=50))
images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
data = TensorImageDataset(images, torch.arange(20) % 3, cond=images.flip(-1))
trainer = Trainer(model, data, batch_size=8, lr=5e-3, steps=4, grad_accum=grad_accum,
                  cond_drop_prob=0.5, out_dir=out, checkpoint_every=0, ema_decay=0.9,
                  progress=False, sample_every=0, sample_count=4, export=False)
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


@pytest.mark.slow  # starts torchrun and two Python processes: about 10-40 s
def test_two_processes_train_a_conditional_model_as_one_does(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(script), str(tmp_path / "ddp"), "2",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    assert "worker rank 1 of 2 done" in done.stdout

    _run_here(script, str(tmp_path / "single"), "1")  # one process, the same global batch
    ddp = load_file(tmp_path / "ddp" / "final.safetensors")
    single = load_file(tmp_path / "single" / "final.safetensors")
    assert ddp.keys() == single.keys()
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
