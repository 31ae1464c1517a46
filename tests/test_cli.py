"""The ``diffusionkit`` command line, end to end on tiny runs, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from diffusionkit.cli import main
from diffusionkit.training import list_checkpoints

TINY = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_sample_resume_push_end_to_end(tmp_path, capsys, hub_tokens):
    run = tmp_path / "runs" / "tiny"
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--steps", "3", *TINY)
    assert code == 0, err
    for name in ("samples.png", "denoise.gif", "config.json", "model.safetensors",
                 "ema.safetensors", "metrics.jsonl", "train_config.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [
        "step-00000002",
        "step-00000003",
    ]
    assert json.loads((run / "train_config.json").read_text())["image_size"] == 8
    # the model samples with x0 clipping (saved with it), which the cosine schedule needs
    assert json.loads((run / "config.json").read_text())["x0_processing"]["class"] == "ClipX0"
    assert "done: 3 steps" in out

    grid, gif = tmp_path / "s.png", tmp_path / "d.gif"
    code, out, err = run_cli(
        capsys, "sample", "--model", str(run), "-n", "4", "--out", str(grid),
        "--sampler", "ddim", "--steps", "5", "--seed", "1", "--gif", str(gif),
    )  # fmt: skip
    assert code == 0, err
    with Image.open(grid) as im:
        assert im.size[0] > 8 and im.mode == "L"
    with Image.open(gif) as im:
        assert im.n_frames == 5

    # resume with more steps: continues from step 3 to 5 with the saved settings
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "5")
    assert code == 0, err
    assert "resuming at step 3" in out
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000005"

    # push to the test Hub (token from HF_TOKEN, never printed), then sample from the repo
    code, out, err = run_cli(capsys, "push", "--model", str(run), "--repo", "alice/cli-tiny")
    assert code == 0, err
    assert "alice/cli-tiny" in out
    assert all(token not in out + err for token in hub_tokens.values())
    code, out, err = run_cli(
        capsys, "sample", "--model", "alice/cli-tiny", "-n", "2", "--image-size", "8",
        "--steps", "3", "--out", str(tmp_path / "hub.png"),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "hub.png").is_file()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--lr", "-1"], ["--lr", "(0, 1]"]),
        (["--ema-decay", "1.5"], ["--ema-decay"]),
        (["--steps", "0"], ["--steps", ">= 1"]),
        (["--image-size", "10", "--dim-mults", "1,2,2"], ["--image-size 10", "multiple of 4"]),
        (["--attn-levels", "3"], ["--attn-levels", "out of range"]),
        (["--groups", "3"], ["--groups 3"]),
        (["--schedule", "quadratic"], ["--schedule", "linear, cosine, sigmoid"]),
    ],
)
def test_out_of_range_options_are_one_line_usage_errors(tmp_path, capsys, args, needles):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), *TINY, *args)
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "r").exists()  # nothing was started


def test_data_errors(tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "train", "--out", str(tmp_path / "r"), *TINY, "--data", str(tmp_path / "nope")
    )
    assert_one_line_error(code, err, 1, "no such file or folder")

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (12, 12), (200, 10, 10)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    code, _, err = run_cli(
        capsys, "train", "--out", str(tmp_path / "r"), *TINY, "--data", str(folder)
    )
    assert_one_line_error(code, err, 1, "cannot read image file", "broken.png")


def test_config_file_and_run_folder_errors(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"steps": 2, "learning_rate": 1e-3}))
    code, _, err = run_cli(
        capsys, "train", "--out", str(tmp_path / "r"), *TINY, "--config", str(config)
    )
    assert_one_line_error(code, err, 2, "unknown setting 'learning_rate'")

    config.write_text(json.dumps({"steps": 2, "dim-mults": [1, 2]}))
    run = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "--out", str(run), *TINY, "--config", str(config))
    assert code == 0, err
    assert json.loads((run / "train_config.json").read_text())["steps"] == 2
    code, _, err = run_cli(capsys, "train", "--out", str(run), *TINY)
    assert_one_line_error(code, err, 2, "already holds a training run", "--resume")
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "new"), "--resume")
    assert_one_line_error(code, err, 2, "no run to resume")


def test_sample_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "--model", str(tmp_path / "nope"))
    assert_one_line_error(code, err, 1)
    code, _, err = run_cli(
        capsys, "sample", "--model", str(tmp_path), "--sampler", "no-such-sampler"
    )
    assert_one_line_error(code, err, 2, "unknown sampler 'no-such-sampler'", "ddim")
    code, _, err = run_cli(capsys, "sample", "--model", str(tmp_path), "-n", "0")
    assert_one_line_error(code, err, 2, "-n/--num")
    code, _, err = run_cli(capsys, "sample", "--model", str(tmp_path), "-n", "100000")
    assert_one_line_error(code, err, 2, "-n/--num", "sample count 100000")


def test_console_entry_point_exits_non_zero_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "diffusionkit", "train", "--out", str(tmp_path / "r"),
         "--data", "digits", "--timesteps", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--timesteps" in done.stderr


def test_help_explains_every_option(capsys):
    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--data", "--out", "--image-size", "--dim", "--dim-mults", "--schedule",
                 "--timesteps", "--steps", "--batch-size", "--lr", "--ema-decay",
                 "--precision", "--resume", "--seed", "--config"):  # fmt: skip
        assert flag in help_text
    # every option has an explanation: no option line ends without help text
    assert "(default: None)" not in help_text


def test_sigmoid_schedule_with_v_prediction_from_the_command_line(tmp_path, capsys):
    from diffusionkit import DenoiseDiffusion, SigmoidSchedule

    out = tmp_path / "run"
    args = ["--out", str(out), *TINY, "--steps", "2", "--schedule", "sigmoid", "--prediction", "v"]
    code, _, err = run_cli(capsys, "train", *args)
    assert code == 0, err
    model = DenoiseDiffusion.from_pretrained(out)
    assert model.schedule == SigmoidSchedule(timesteps=20)
    assert model.prediction.value == "v"


# ------------------------------------------- hostile and unlucky input (issue 15)


def _tiny_run(tmp_path, capsys, steps: str = "4"):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--steps", steps, *TINY)
    assert code == 0, err
    return run


def test_resume_of_a_damaged_checkpoint_names_it_and_the_choice(tmp_path, capsys):
    run = _tiny_run(tmp_path, capsys)
    newest = run / "checkpoints" / "step-00000004" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 1
    newest.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "6")
    assert_one_line_error(
        code, err, 1, "step-00000004 is damaged", "model.safetensors", "sha256",
        "newest valid checkpoint is", "step-00000002", "--resume newest-valid",
    )  # fmt: skip
    code, out, err = run_cli(
        capsys, "train", "--out", str(run), "--resume", "newest-valid", "--steps", "6"
    )
    assert code == 0, err
    assert "note: skipped damaged checkpoint" in err and "step-00000004" in err
    assert "resuming at step 2" in out
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000006"


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("model", ["model.safetensors is missing"]),  # was: "error: model"
        ("rng", ["rng.safetensors is missing"]),  # was: rc 0, fresh random state
        ("step", ["state.json has step -5", "integer >= 0"]),  # was: "division by zero"
    ],
)
def test_resume_messages_name_the_file_and_the_value(tmp_path, capsys, damage, needles):
    run = _tiny_run(tmp_path, capsys, steps="2")
    folder = run / "checkpoints" / "step-00000002"
    if damage == "step":  # a checkpoint from before manifests, with a bad step
        (folder / "manifest.json").unlink(missing_ok=True)
        state = json.loads((folder / "state.json").read_text())
        state.update(format_version=1, step=-5)
        (folder / "state.json").write_text(json.dumps(state))
    else:
        (folder / f"{damage}.safetensors").unlink()
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "4")
    assert_one_line_error(code, err, 1, "step-00000002", *needles)


def test_resume_from_an_older_checkpoint_by_path(tmp_path, capsys):
    run = _tiny_run(tmp_path, capsys, steps="6")
    older = run / "checkpoints" / "step-00000004"
    code, out, err = run_cli(
        capsys, "train", "--out", str(run), "--resume", str(older), "--steps", "5"
    )
    assert code == 0, err
    assert "resuming at step 4" in out and "note: resumed from step 4: moved" in err
    names = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert names == ["step-00000004", "step-00000005"]  # step 6 of the old branch moved aside
    assert (run / "checkpoints" / "abandoned" / "step-00000006").is_dir()


def test_a_checkpoint_from_before_manifests_resumes_with_a_note(tmp_path, capsys):
    run = _tiny_run(tmp_path, capsys, steps="2")
    folder = run / "checkpoints" / "step-00000002"
    (folder / "manifest.json").unlink()
    state = json.loads((folder / "state.json").read_text())
    state["format_version"] = 1
    (folder / "state.json").write_text(json.dumps(state))
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "3")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "cannot be verified" in notes[0]


def test_a_folder_holding_something_else_is_refused(tmp_path, capsys):
    # finding 6: a foreign config.json in --out was overwritten at the end of the run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "bert"}')
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--steps", "1", *TINY)
    assert_one_line_error(code, err, 2, "config.json", "not a diffusionkit model's config")
    assert (out / "config.json").read_text() == '{"model_type": "bert"}'
    assert not (out / "train_config.json").exists()
    (out / "config.json").unlink()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--steps", "1", *TINY)
    assert_one_line_error(code, err, 2, "notes.txt", "not part of a training run")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    code, _, err = run_cli(capsys, "train", "--out", str(out / "notes.txt"), "--steps", "1", *TINY)
    assert_one_line_error(code, err, 1, "notes.txt is a file", "choose a folder")
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_started_run_without_checkpoints_is_not_silently_restarted(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--steps", "1", *TINY)
    assert_one_line_error(code, err, 2, "wrote no checkpoint", "delete the folder")


@pytest.mark.parametrize(
    ("device", "needle"),
    [("meta", "not on 'meta'"), ("cuda:7", "--device cuda:7"), ("nonsense", "not a device")],
)
def test_a_device_that_cannot_train_is_refused_before_anything_is_written(
    tmp_path, capsys, device, needle
):
    # finding 9: --device meta failed only after writing train_config.json
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "train", "--out", str(out), "--steps", "1", *TINY, "--device", device
    )
    assert_one_line_error(code, err, 2, needle)
    assert not out.exists()


def test_sample_into_a_folder_fails_before_sampling(tmp_path, capsys, monkeypatch):
    # finding 9: "sample --out" naming a folder failed only after the whole chain had run
    from diffusionkit import DenoiseDiffusion

    run = _tiny_run(tmp_path, capsys, steps="1")

    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(DenoiseDiffusion, "reverse_sample", must_not_sample)
    folder = tmp_path / "pictures"
    folder.mkdir()
    code, _, err = run_cli(capsys, "sample", "--model", str(run), "--out", str(folder))
    assert_one_line_error(code, err, 2, "--out", "is a folder", "samples.png")
    code, _, err = run_cli(
        capsys, "sample", "--model", str(run), "--out", str(tmp_path / "g.png"),
        "--gif", str(folder),
    )  # fmt: skip
    assert_one_line_error(code, err, 2, "--gif", "is a folder")


def test_help_documents_the_resume_choices(capsys):
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for needle in ("--resume [WHICH]", "'newest'", "'newest-valid'", "checkpoint folder",
                   "cannot change"):  # fmt: skip
        assert needle in help_text, needle


# ------------------------------------------------- conditional models (issue 14)


def test_class_conditional_train_and_sample_with_labels_and_guidance(tmp_path, capsys):
    run = tmp_path / "cond"
    code, out, err = run_cli(
        capsys, "train", "--out", str(run), "--steps", "2", *TINY, "--class-conditional"
    )
    assert code == 0, err
    assert "class-conditional (10 classes), condition dropped for 10% of the examples" in out
    assert json.loads((run / "config.json").read_text())["net"]["config"]["num_classes"] == 10
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["class_conditional"] is True and settings["cond_drop_prob"] == 0.1

    def sample(name: str, *args: str) -> tuple[str, bytes]:
        path = tmp_path / name
        code, out, err = run_cli(capsys, "sample", "--model", str(run), "--steps", "3",
                                 "--out", str(path), *args)  # fmt: skip
        assert code == 0, err
        return out, path.read_bytes()

    out, _ = sample("all.png")
    assert "60 samples" in out and "labels 0-9 in turn" in out  # 6 of each class
    out, plain = sample("plain.png", "--labels", "3,3,7")
    assert "3 samples" in out and "labels 3,3,7" in out
    out, one = sample("one.png", "--labels", "3,3,7", "--guidance-scale", "1")
    assert one == plain  # guidance scale 1 is plain conditional sampling
    _, guided = sample("guided.png", "--labels", "3,3,7", "--guidance-scale", "4")
    assert guided != plain
    out, _ = sample("more.png", "--labels", "3,7", "-n", "5")
    assert "5 samples" in out

    for args, needles in (
        (["--labels", "10"], ["--labels 10", "10 classes (0-9"]),
        (["--labels", "three"], ["--labels", "comma-separated class numbers"]),
        (["--cond", str(tmp_path)], ["--cond", "takes no conditioning images"]),
    ):
        code, _, err = run_cli(capsys, "sample", "--model", str(run), "--out",
                               str(tmp_path / "x.png"), *args)  # fmt: skip
        assert_one_line_error(code, err, 2, *needles)


def test_guidance_and_labels_need_a_conditional_model(tmp_path, capsys):
    run = _tiny_run(tmp_path, capsys, steps="1")
    for args, needle in (
        (["--labels", "1"], "is not class-conditional"),
        (["--guidance-scale", "2"], "is unconditional"),
    ):
        code, _, err = run_cli(capsys, "sample", "--model", str(run), *args)
        assert_one_line_error(code, err, 2, needle)


def _pairs(root, names, cond_names=None, size=8):
    """``root/hr/NAME`` (size x size) and ``root/lr/NAME`` (half the size) PNGs."""
    for folder, files, side, value in (
        ("hr", names, size, 200),
        ("lr", names if cond_names is None else cond_names, size // 2, 50),
    ):
        for name in files:
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (side, side), value).save(path)
    return root / "hr", root / "lr"


def test_image_conditional_train_resume_and_sample(tmp_path, capsys):
    hr, lr = _pairs(tmp_path, [f"{c}/{i}.png" for c in "ab" for i in range(6)])
    run = tmp_path / "sr"
    tiny = [*TINY[2:], "--channels", "1"]  # TINY without its "--data digits"
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--steps", "2", "--data",
                             str(hr), "--cond-data", str(lr), *tiny)  # fmt: skip
    assert code == 0, err
    assert f"conditioned on the images of {lr} (1 channel)" in out
    assert json.loads((run / "config.json").read_text())["net"]["config"]["cond_channels"] == 1

    # resume: the conditioning is fixed, the dropout may change and is reported
    code, _, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--cond-channels", "3")
    assert_one_line_error(code, err, 2, "--cond-channels 3 (the run has 1)")
    code, out, err = run_cli(
        capsys, "train", "--out", str(run), "--resume", "--steps", "3", "--cond-drop-prob", "0.2"
    )
    assert code == 0, err
    assert "changed on resume: --cond-drop-prob 0.1 -> 0.2, --steps 2 -> 3" in out

    grid = tmp_path / "sr.png"
    code, out, err = run_cli(capsys, "sample", "--model", str(run), "--steps", "2", "--out",
                             str(grid), "--cond", str(lr / "a"), "--guidance-scale", "2")  # fmt: skip
    assert code == 0, err
    assert "6 samples" in out and f"conditioned on the 6 images of {lr / 'a'}" in out
    code, out, err = run_cli(capsys, "sample", "--model", str(run), "--steps", "2", "--out",
                             str(grid), "--cond", str(lr / "a" / "0.png"), "-n", "3")  # fmt: skip
    assert code == 0, err
    assert "3 samples" in out
    code, _, err = run_cli(capsys, "sample", "--model", str(run), "--out", str(grid))
    assert_one_line_error(code, err, 2, "is image-conditional", "--cond FILE_OR_FOLDER")


def test_unpaired_conditioning_images_are_named(tmp_path, capsys):
    names = [f"{i}.png" for i in range(4)]
    hr, lr = _pairs(tmp_path, names, cond_names=[*names[:3], "4.png"])
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--steps", "1",
                           "--data", str(hr), "--cond-data", str(lr), *TINY[2:])  # fmt: skip
    assert_one_line_error(
        code, err, 1, f"1 image in {hr} has no conditioning image in {lr}: 3.png",
        f"1 conditioning image in {lr} has no image in {hr}: 4.png",
    )  # fmt: skip
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_conditioning_options_are_checked_before_anything_runs(tmp_path, capsys):
    hr, lr = _pairs(tmp_path, ["1.png", "2.png"])
    out = ["--out", str(tmp_path / "r"), *TINY[2:]]
    for args, code_, needles in (
        (["--data", "digits", "--cond-data", str(lr)], 2, ["--data must be a folder"]),
        (["--data", str(hr), "--class-conditional"], 2, ["--class-conditional needs labelled"]),
        (["--data", "digits", "--cond-drop-prob", "0.2"], 2, ["--cond-drop-prob 0.2", "add --class-conditional"]),
        (["--data", "digits", "--cond-channels", "1"], 2, ["--cond-channels", "pass --cond-data"]),
    ):  # fmt: skip
        code, _, err = run_cli(capsys, "train", *out, *args)
        assert_one_line_error(code, err, code_, *needles)


def test_a_resume_reports_only_settings_that_changed(tmp_path, capsys):
    run = _tiny_run(tmp_path, capsys, steps="2")  # --channels resolved to 1, saved as 1
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--resume", "--steps", "3")
    assert code == 0, err
    assert "changed on resume: --steps 2 -> 3" in out  # was: "--channels 1 -> 1, --steps ..."


def test_class_conditional_training_on_a_labelled_folder(tmp_path, capsys):
    hr, _ = _pairs(tmp_path, [f"{c}/{i}.png" for c in ("boots", "shirts") for i in range(4)])
    run = tmp_path / "folder-cond"
    code, out, err = run_cli(capsys, "train", "--out", str(run), "--steps", "1", "--data",
                             str(hr), "--class-conditional", *TINY[2:])  # fmt: skip
    assert code == 0, err
    assert "class-conditional (2 classes)" in out
    assert json.loads((run / "config.json").read_text())["net"]["config"]["num_classes"] == 2
    code, out, err = run_cli(capsys, "sample", "--model", str(run), "--steps", "2",
                             "--out", str(tmp_path / "s.png"), "--labels", "1")  # fmt: skip
    assert code == 0, err
    assert "1 samples" in out and "labels 1" in out
