"""Finding 4: sizes are bounded before anything is allocated, with a message that says why.

``train --image-size 100000`` on 8x8 digits used to be killed by the OOM killer without a word;
absurd widths, level counts or sample counts allocated gigabytes before failing. The bounds live
in :mod:`diffusionkit.limits`, so every reader of a configuration (command line, run settings,
Hub configs) can apply the same ones.
"""

from __future__ import annotations

import pytest

from diffusionkit import limits
from diffusionkit.cli import main
from diffusionkit.limits import LimitError

TINY = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    ("check", "value", "needles"),
    [
        (limits.check_timesteps, 10**9, ["timesteps 1000000000", "limit of 100,000"]),
        (limits.check_timesteps, 1e8, ["timesteps 100000000"]),  # JSON numbers are floats
        (limits.check_timesteps, 1, ["at least 2"]),
        (limits.check_timesteps, "50", ["must be an integer"]),
        (limits.check_image_channels, 1000, ["image channels 1000", "limit of 64"]),
        (limits.check_width, 65536, ["level width 65536", "limit of 4,096"]),
        (limits.check_levels, 12, ["number of levels 12", "limit of 8"]),
        (limits.check_image_size, 100_000, ["image size 100000", "limit of 4,096"]),
        (limits.check_sample_count, 10**6, ["sample count 1000000", "limit of 4,096"]),
    ],
)
def test_each_limit_names_the_source_the_value_and_the_bound(check, value, needles):
    with pytest.raises(LimitError) as info:
        check(value, "config.json of runs/x")
    message = str(info.value)
    assert message.startswith("config.json of runs/x: ")
    for needle in needles:
        assert needle in message, message
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


def test_values_inside_the_limits_pass_unchanged():
    assert limits.check_timesteps(1000, "t") == 1000
    assert limits.check_timesteps(4000.0, "t") == 4000  # an integral float from JSON
    assert limits.check_image_channels(3, "c") == 3
    assert limits.check_image_size(1024, "s") == 1024
    assert limits.check_upscale(64, 8, "digits", "s") == 64
    limits.check_unet_config({"in_channels": 3, "dim": 128, "dim_mults": [1, 2, 2, 2]}, "u")


def test_unet_config_checks_every_size_field():
    with pytest.raises(LimitError, match=r"u \(in_channels\): image channels 4096"):
        limits.check_unet_config({"in_channels": 4096}, "u")
    with pytest.raises(LimitError, match=r"level width 8192"):
        limits.check_unet_config({"dim": 1024, "dim_mults": [1, 2, 4, 8]}, "u")
    with pytest.raises(LimitError, match="number of levels 20"):
        limits.check_unet_config({"dim": 8, "dim_mults": [1] * 20}, "u")


def test_built_in_data_is_not_blown_up_before_allocation():
    from diffusionkit.data import load_dataset

    with pytest.raises(LimitError, match=r"enlarges the 8x8 images of digits 25 times"):
        load_dataset("digits", image_size=200)
    with pytest.raises(LimitError, match="image size 100000"):
        load_dataset("digits", image_size=100_000)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--image-size", "100000"], ["--image-size: image size 100000", "limit of 4,096"]),
        (["--image-size", "256"], ["enlarges the 8x8 images of digits 32 times", "at most 128"]),
        (["--dim", "100000"], ["level width 100000"]),
        (["--dim-mults", "1,1,1,1,1,1,1,1,1,1", "--image-size", "512"], ["levels 10"]),
        (["--sample-count", "100000"], ["--sample-count: sample count 100000"]),
    ],
)
def test_cli_refuses_before_allocating(tmp_path, capsys, args, needles):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), *TINY, "--steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    for needle in needles:
        assert needle in err, err
    assert not out.exists()  # refused before anything was written


def test_cli_prints_a_memory_estimate_at_the_start(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), *TINY, "--steps", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("memory:"))
    for part in ("per process", "weights", "gradients", "AdamW state", "EMA", "activations",
                 "8 images per forward pass", "data"):  # fmt: skip
        assert part in line, line
