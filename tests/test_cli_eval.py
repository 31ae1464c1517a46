"""``diffusionkit eval`` on tiny untrained models: the table, the JSON, agreement with the library
(the same samples and bound computed directly), and its one-line errors."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.cli.eval import load_data
from diffusionkit.metrics import score, shipped_classifier

pytest.importorskip("sklearn")  # the built-in digits

ROWS = ("fd", "kid", "precision", "recall", "density", "coverage")


def save_tiny(folder: Path, num_classes: int | None = None) -> Path:
    """An untrained 2-level U-Net with T = 10, written by save_pretrained."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(
            in_channels=1,
            dim=8,
            dim_mults=(1, 2),
            attns=(False, False),
            groups=4,
            num_classes=num_classes,
        )
    model = DenoiseDiffusion(net, LinearSchedule(timesteps=10, scale_with_timesteps=False))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_conditional(tmp_path_factory) -> Path:
    folder = save_tiny(tmp_path_factory.mktemp("cond") / "model", num_classes=10)
    # as 'diffusionkit train' records it: the model is evaluated at 16x16 without --image-size
    (folder / "train_config.json").write_text(json.dumps({"image_size": 16}))
    return folder


def evaluate(capsys, model: Path, *args: str) -> tuple[str, dict]:
    json_path = model.parent / "eval.json"
    code, out, err = run_cli(
        capsys, "eval", "--model", str(model), "--data", "digits", "--json", str(json_path),
        "--no-progress", *args,
    )  # fmt: skip
    assert code == 0, err
    return out, json.loads(json_path.read_text())


def test_eval_prints_a_table_and_writes_json(tiny, capsys):
    out, record = evaluate(
        capsys, tiny, "--image-size", "8", "-n", "16", "--fd", "--nll", "--steps", "3",
        "--batch-size", "8",
    )  # fmt: skip
    lines = out.splitlines()
    assert "16 held-out images of digits (8x8x1)" in lines[0]
    assert "ddpm, 3 network calls, seed 0" in lines[0] and "shipped digits classifier" in lines[0]
    assert lines[1].split()[:3] == ["metric", "model", "real"]
    table = {line.split()[0]: line.split() for line in lines[2:] if line.split()}
    for key in (*ROWS, "nll"):
        assert key in table, out
    assert "accuracy" not in table  # an unconditional model has no labels to check
    assert table["nll"][2] == "+-" and table["nll"][4] == "-"  # no real column for the bound
    assert lines[-1] == f"wrote {tiny.parent / 'eval.json'}"

    assert record["n"] == 16 and record["image_size"] == 8 and record["channels"] == 1
    assert (record["sampler"], record["steps"], record["nll_steps"]) == ("ddpm", 3, 10)
    assert record["data"] == "digits" and record["seed"] == 0 and record["ema"] is True
    model, real = record["scores"]["model"], record["scores"]["real"]
    assert set(model) == {*ROWS, "kid_std", "nll", "nll_sem"}
    assert set(real) == {*ROWS, "kid_std"}
    assert all(math.isfinite(v) for v in [*model.values(), *real.values()])
    assert 0 <= model["precision"] <= 1 and 0 <= real["recall"] <= 1
    assert real["fd"] < model["fd"]  # real digits beat an untrained model
    assert model["nll"] > 0 and model["nll_sem"] > 0


def test_eval_scores_are_the_library_scores_of_the_same_samples(tiny, capsys):
    _, record = evaluate(
        capsys, tiny, "--image-size", "8", "-n", "12", "--fd", "--nll", "--steps", "4",
        "--batch-size", "8", "--seed", "3", "--nll-steps", "5",
    )  # fmt: skip
    model = DenoiseDiffusion.from_pretrained(tiny)
    heldout = load_data("digits", 8, 1, 12).heldout
    assert heldout.shape == (12, 1, 8, 8)
    # the CLI draws its batches of 8 and 4 from one generator seeded with --seed
    g = torch.Generator().manual_seed(3)
    samples = torch.cat(
        [
            model.reverse_sample((n, 1, 8, 8), generator=g, steps=4, clip=True, progress=False)
            for n in (8, 4)
        ]
    )
    expected = score(samples, heldout, classifier=shipped_classifier("digits"), seed=3)
    for key in ROWS:
        assert record["scores"]["model"][key] == expected[key], key
    # --nll: the model's own bound of the same held-out images, batch by batch
    g = torch.Generator().manual_seed(3)
    bits = torch.cat(
        [model.nll(x, steps=5, generator=g, progress=False).double() for x in heldout.split(8)]
    )
    assert record["scores"]["model"]["nll"] == pytest.approx(float(bits.mean()), rel=1e-12)


def test_eval_of_a_class_conditional_model_reports_accuracy(tiny_conditional, capsys):
    out, record = evaluate(capsys, tiny_conditional, "-n", "20", "--steps", "2", "--seed", "1")
    assert record["image_size"] == 16  # from train_config.json; the classifier sees the 8x8 crop
    model, real = record["scores"]["model"], record["scores"]["real"]
    assert 0 <= model["accuracy"] <= 1
    assert real["accuracy"] > 0.8  # real training digits, classified as their labels
    assert "accuracy" in out and "nll" not in record["scores"]["model"]  # --fd by default


def test_eval_on_a_folder_with_a_chosen_classifier(tiny, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    digits = load_data("digits", 8, 1, 12).heldout
    for i, image in enumerate(digits):
        pixels = ((image[0] + 1) * 127.5).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i:02d}.png")
    args = ["eval", "--model", str(tiny), "--data", str(folder), "--image-size", "8",
            "-n", "12", "--steps", "2", "--no-progress", "--json", "none"]  # fmt: skip
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, 2, "--fd on the folder", "--features")
    code, out, err = run_cli(capsys, *args, "--features", "digits")
    assert code == 0, err
    assert "12 images of" in out and "wrote" not in out
    table = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert table["fd"][2] == "-"  # a folder has no training split to compare with
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["-n", "0"], 2, ["-n/--num", ">= 1"]),
        (["-n", "5", "--fd"], 2, ["-n 5", "at least 10"]),
        (["-n", "400"], 2, ["-n 400", "only 359 images"]),
        (["-n", "10001"], 2, ["-n 10001", "at most 10,000 of 8x8x1"]),
        (["--image-size", "4"], 2, ["4x4", "8x8", "never shrunk"]),
        (["--data", "nowhere"], 2, ["--data nowhere", "digits, fashion-mnist"]),
        (["--nll", "--features", "digits"], 2, ["--features", "add --fd"]),
        (["--nll-steps", "3"], 2, ["--nll-steps", "add --nll"]),
        (["--nll", "--nll-steps", "11"], 2, ["--nll-steps 11", "10 timesteps"]),
        (["--steps", "11"], 2, ["--steps 11", "10 timesteps"]),
        (["--sampler", "nope"], 2, ["--sampler"]),
        (["--features", "/nonexistent/clf"], 2, ["--features /nonexistent/clf", "not found"]),
    ],
)
def test_eval_errors_are_one_line(tiny, capsys, args, code, needles):
    base = ["eval", "--model", str(tiny), "--data", "digits", "--json", "none"]
    if "--image-size" not in args:
        base += ["--image-size", "8"]
    assert_one_line_error(*run_cli(capsys, *base, *args)[::2], code, *needles)


def test_eval_refuses_models_and_sizes_that_do_not_match(tiny, tmp_path, capsys):
    base = ["--data", "digits", "--json", "none"]
    code, _, err = run_cli(capsys, "eval", "--model", str(tmp_path / "missing" / "m"), *base)
    assert_one_line_error(code, err, 1, "missing/m", "neither an existing folder")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", "--model", str(tmp_path / "empty"), *base)
    assert_one_line_error(code, err, 1, "holds no model")
    code, _, err = run_cli(capsys, "eval", "--model", str(tiny), *base)
    assert_one_line_error(code, err, 2, "does not record the image size", "--image-size")
    recorded = save_tiny(tmp_path / "recorded")
    (recorded / "train_config.json").write_text(json.dumps({"image_size": 8}))
    code, _, err = run_cli(capsys, "eval", "--model", str(recorded), "--image-size", "16", *base)
    assert_one_line_error(code, err, 2, "--image-size 16", "trained at 8x8")
    code, _, err = run_cli(
        capsys,
        "eval",
        "--model",
        str(tiny),
        "--image-size",
        "8",
        *base[:2],
        "--json",
        str(tmp_path),
    )
    assert_one_line_error(code, err, 2, "--json", "is a folder")


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None,
    reason="torch-fidelity is installed: Inception weights would be downloaded",
)
def test_eval_with_inception_features_names_the_extra_before_sampling(tiny, capsys):
    code, _, err = run_cli(
        capsys, "eval", "--model", str(tiny), "--data", "digits", "--image-size", "8",
        "--features", "inception", "--json", "none",
    )  # fmt: skip
    assert_one_line_error(code, err, 1, 'pip install "diffusionkit[fid]"')


def test_eval_nll_alone_draws_no_samples(tiny, capsys):
    out, record = evaluate(capsys, tiny, "--image-size", "8", "-n", "3", "--nll")
    rows = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert rows == ["nll"]  # no sample-quality rows, no real-images note
    assert (record["sampler"], record["steps"], record["features"]) == (None, None, None)
    assert record["scores"]["real"] is None and record["n"] == 3
