#!/usr/bin/env bash
# Train on several processes with torchrun and PyTorch DistributedDataParallel.
#
# The command is the ordinary `diffusionkit train`: under torchrun every process joins the
# process group (gloo on CPUs, nccl on GPUs), takes its share of each global batch of
# --batch-size images, and rank 0 alone writes checkpoints, samples and the model. The result
# matches a single-process run with the same batch size, and a run can be resumed (--resume)
# with any number of processes.
#
# Expected runtime: like the single-process run (about 6 minutes) on a 2-core CPU with
# NPROC=2 -- two processes share the same two cores -- and faster with one GPU per process.
# DIFFUSIONKIT_EXAMPLE_TINY=1 trains a tiny model for a few steps, as the smoke test does.
#
#   NPROC=2 bash examples/distributed_train.sh [more diffusionkit train options]
set -euo pipefail
NPROC=${NPROC:-2}
OUT=${OUT:-runs/digits-ddp}
PYTHON=${PYTHON:-python}
TINY=()
if [ -n "${DIFFUSIONKIT_EXAMPLE_TINY:-}" ]; then
    TINY=(--steps 2 --batch-size 8 --image-size 8 --dim 8 --dim-mults 1,2 --attn-levels none
          --groups 4 --timesteps 20 --sample-count 4 --sample-every 0 --checkpoint-every 0
          --no-progress)
fi
# --standalone: a single machine, with a free local port chosen by torchrun
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m diffusionkit train --data digits --out "$OUT" "${TINY[@]}" "$@"
