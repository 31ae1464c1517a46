"""Benchmark 5: sample quality at an equal budget on Fashion-MNIST (28x28), the longer budget.

The same configurations, networks, loop and metric as benchmark 4 (``quality_budget``), on
Fashion-MNIST's official split (60,000 training images; samples are scored against the 10,000
test images in the feature space of the shipped Fashion-MNIST classifier). A 28x28 step costs
9 (diffusionkit's and diffusers' networks) to 14 (lucidrains') times an 8x8 one, so the default
budget (``FASHION``: 1,000 and 2,000 steps, 1,000 samples, three seeds, six configurations) is
about 7 hours on 2 cores, estimated from the measured per-step costs; ``--quality-steps``,
``--quality-samples``, ``--quality-seeds`` and ``--quality-settings`` shorten it.
The data comes from Debian's ``dataset-fashion-mnist`` package; without it the section is
skipped with the reason in its results.
"""

from __future__ import annotations

from typing import Any

from benchmarks import quality_budget
from benchmarks.common import Context

NAME = "quality_fashion"


def run(ctx: Context, labels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run benchmark 5 and return its results (JSON-serializable)."""
    from benchmarks.quality import fashion

    # the files only: every worker reads the 70,000 images itself
    if not (fashion.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        reason = (
            f"Fashion-MNIST files not found in {fashion.FASHION_MNIST_DIR}. "
            "Install them with: apt-get install dataset-fashion-mnist"
        )
        ctx.log(f"quality on fashion-mnist: skipped ({reason})")
        return {"skipped": reason, "data_dir": str(fashion.FASHION_MNIST_DIR)}
    default = quality_budget.QUICK_FASHION if ctx.quick else quality_budget.FASHION
    return quality_budget.run(ctx, labels=labels, default=default)
