"""The Trainer: exact resume, the NaN guard, data order, outputs and input checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data import TensorImageDataset
from diffusionkit.training import (
    DataOrder,
    LRDecay,
    NonFiniteLossError,
    Precision,
    ResumeMismatchError,
    Trainer,
    WarmupSchedule,
    default_precision,
    list_checkpoints,
    load_checkpoint,
    read_metrics,
)


def tiny_model(seed: int = 0, dropout: float = 0.0, **unet) -> DenoiseDiffusion:
    torch.manual_seed(seed)
    kwargs = dict(dim=8, dim_mults=(1,), attns=(False,), groups=4, n_blocks=1, mid_attn=False)
    kwargs.update(unet)
    net = UNet(in_channels=1, dropout=dropout, **kwargs)
    return DenoiseDiffusion(net, LinearSchedule(timesteps=50))


def tiny_data(n: int = 20, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1


QUIET = dict(progress=False, sample_every=0, sample_count=4, export=False)


def state_of(trainer: Trainer) -> dict[str, Tensor]:
    out = {f"net.{k}": v for k, v in trainer.diffusion.net.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if isinstance(v, Tensor)})
    return out


def test_resume_after_an_interruption_is_bit_exact(tmp_path, monkeypatch):
    # dropout exercises the saved torch RNG; 20 examples with batches of 8 cross epochs
    # mid-batch; accumulation, warm-up and cosine decay exercise the rest of the state
    settings = dict(
        batch_size=8, lr=2e-3, steps=7, grad_accum=2, warmup_steps=3, lr_decay="cosine",
        checkpoint_every=3, ema_decay=0.9, **QUIET,
    )  # fmt: skip
    straight = Trainer(tiny_model(dropout=0.1), tiny_data(), out_dir=tmp_path / "a", **settings)
    straight.train()

    interrupted = Trainer(tiny_model(dropout=0.1), tiny_data(), out_dir=tmp_path / "b", **settings)
    real_step = Trainer._train_step

    def crash_at_step_5(self, batches):
        if self.step == 5:
            raise KeyboardInterrupt
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-00000003"]

    torch.manual_seed(12345)  # a different process state: resume must restore everything
    resumed = Trainer(
        tiny_model(seed=99, dropout=0.1), tiny_data(), out_dir=tmp_path / "b", **settings
    )
    resumed.resume()
    assert resumed.step == 3
    resumed.train()
    a, b = state_of(straight), state_of(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert resumed.ema.num_updates == straight.ema.num_updates == 7
    # the metrics of the redone steps are not duplicated
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps == sorted(set(steps))


def test_resume_rejects_a_different_architecture(tmp_path):
    Trainer(
        tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, out_dir=tmp_path, **QUIET
    ).train()
    other = Trainer(tiny_model(dim=12), tiny_data(), batch_size=4, lr=1e-3, steps=2, **QUIET)
    with pytest.raises(ValueError, match="does not fit this model"):
        other.resume(tmp_path)


class NaNAfter(nn.Module):
    """Wraps a network and returns NaN from its ``calls``-th training forward on."""

    def __init__(self, net: nn.Module, calls: int) -> None:
        super().__init__()
        self.net, self.calls, self.seen = net, calls, 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.net(x, t)
        if self.training:
            self.seen += 1
            if self.seen > self.calls:
                return out * float("nan")
        return out


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    base = tiny_model()
    model = DenoiseDiffusion(NaNAfter(base.net, calls=5), base.schedule)
    trainer = Trainer(model, tiny_data(), batch_size=4, lr=1e-3, steps=10, out_dir=tmp_path,
                      checkpoint_every=2, **QUIET)  # fmt: skip
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "step 5" in message and "nan" in message.lower()
    assert "step-00000004" in message  # names the checkpoint to resume from
    assert info.value.step == 5
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step-00000002",
        "step-00000004",
    ]
    assert trainer.step == 5  # five good updates, the bad one not applied
    for p in trainer.diffusion.parameters():
        assert torch.isfinite(p).all()
    saved = load_checkpoint(tmp_path)
    assert saved.step == 4
    assert all(torch.isfinite(v).all() for v in saved.tensors["model"].values())


def test_data_order_visits_every_example_once_per_epoch_and_resumes_mid_epoch():
    order = DataOrder(10, seed=3)
    first = order.take(7)
    snapshot = order.state_dict()
    rest = order.take(13)  # the end of epoch 0, all of epoch 1
    epoch0 = torch.cat([first, rest[:3]])
    assert sorted(epoch0.tolist()) == list(range(10))
    assert sorted(rest[3:].tolist()) == list(range(10))
    assert not torch.equal(epoch0, rest[3:])  # a new permutation each epoch
    again = DataOrder(10, seed=0)
    again.load_state_dict(snapshot)
    assert torch.equal(again.take(13), rest)
    assert not torch.equal(DataOrder(10, seed=4).take(10), epoch0)
    with pytest.raises(ValueError, match="dataset of 10"):
        DataOrder(11).load_state_dict(snapshot)


def test_warmup_schedule():
    s = WarmupSchedule(warmup_steps=4, total_steps=9, decay=LRDecay.COSINE)
    assert [s.factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.factor(4) == 1.0 and s.factor(8) == pytest.approx(0.0, abs=1e-12)
    assert s.factor(6) == pytest.approx(0.5)
    assert WarmupSchedule(2).factor(1000) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        WarmupSchedule(decay=LRDecay.COSINE)


def test_outputs_metrics_samples_and_export(tmp_path):
    trainer = Trainer(
        tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=4, out_dir=tmp_path,
        log_every=2, sample_every=2, sample_count=4, checkpoint_every=0, progress=False,
    )  # fmt: skip
    result = trainer.train()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert set(r) >= {"step", "loss", "lr", "grad_norm", "samples_per_s"}
        assert math.isfinite(r["loss"]) and r["samples_per_s"] > 0
    assert (tmp_path / "samples" / "step-00000002.png").is_file()
    assert result.samples == tmp_path / "samples.png" and result.samples.is_file()
    assert result.gif is not None and result.gif.is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]
    loaded = DenoiseDiffusion.from_pretrained(tmp_path)  # EMA weights by default
    for a, b in zip(loaded.net.parameters(), trainer.ema.module.parameters(), strict=True):
        assert torch.equal(a, b)
    raw = DenoiseDiffusion.from_pretrained(tmp_path, use_ema=False)
    for a, b in zip(raw.net.parameters(), trainer.diffusion.net.parameters(), strict=True):
        assert torch.equal(a, b)
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 4 and state["ema"]["num_updates"] == 4


class Recorder(nn.Module):
    """A conditional network that records the labels and conditioning images it is given."""

    def __init__(self, num_classes: int | None = None, cond_channels: int = 0) -> None:
        super().__init__()
        self.num_classes, self.cond_channels = num_classes, cond_channels
        self.conv = nn.Conv2d(1, 1, 1)
        self.seen: list[tuple[Tensor | None, Tensor | None]] = []

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond=None) -> Tensor:
        self.seen.append((labels, cond))
        return self.conv(x)


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _conditional_items(form: str, n: int = 12) -> list:
    """Item ``i``: an image of constant value ``v_i``, label ``i % 3``, a cond of value ``v_i``."""
    values = torch.linspace(-1, 1, n)
    images = [torch.full((1, 8, 8), float(v)) for v in values]
    if form == "image":
        return images
    if form == "image, label":
        return [(im, i % 3) for i, im in enumerate(images)]
    if form == "image, cond":
        return [(im, im.clone()) for im in images]
    return [{"image": im, "label": i % 3, "cond": im.clone()} for i, im in enumerate(images)]


@pytest.mark.parametrize("form", ["image", "image, label", "image, cond", "mapping"])
def test_every_item_form_reaches_the_loss(form, monkeypatch):
    calls = []
    real_forward = DenoiseDiffusion.forward

    def recording(self, x0, **kwargs):
        calls.append((x0.clone(), kwargs))
        return real_forward(self, x0, **kwargs)

    monkeypatch.setattr(DenoiseDiffusion, "forward", recording)
    classes = 3 if form in ("image, label", "mapping") else None
    cond_channels = 1 if form in ("image, cond", "mapping") else 0
    model = DenoiseDiffusion(Recorder(classes, cond_channels), LinearSchedule(50))
    trainer = Trainer(model, _Items(_conditional_items(form)), batch_size=6, lr=1e-3, steps=4,
                      grad_accum=2, cond_drop_prob=0.2 if classes or cond_channels else 0.0,
                      **QUIET)  # fmt: skip
    trainer.train()
    assert len(calls) == 8
    values = torch.linspace(-1, 1, 12)
    for x0, kwargs in calls:
        index = (x0[:, 0, 0, 0, None] - values).abs().argmin(1)  # which item each example is
        assert ("labels" in kwargs) == (classes is not None)
        assert ("cond" in kwargs) == (cond_channels > 0)
        if classes:
            assert torch.equal(kwargs["labels"], index % 3)
        if cond_channels:
            assert torch.equal(kwargs["cond"], x0)  # each example with its own cond
        if classes or cond_channels:  # the loss's own dropout, one generator per example
            assert kwargs["cond_drop_prob"] == 0.2 and len(kwargs["generator"]) == 3
        else:
            assert "cond_drop_prob" not in kwargs and "generator" not in kwargs


def _dropped(grad_accum: int) -> tuple[Tensor, Tensor]:
    """(labels, cond values) the network saw in training, over 3 steps of 12."""
    net = Recorder(num_classes=3, cond_channels=1)
    model = DenoiseDiffusion(net, LinearSchedule(50))
    Trainer(model, _Items(_conditional_items("mapping")), batch_size=12, lr=1e-3, steps=3,
            grad_accum=grad_accum, cond_drop_prob=0.5, **QUIET).train()  # fmt: skip
    labels = torch.cat([labels for labels, _ in net.seen])
    conds = torch.cat([cond[:, 0, 0, 0] for _, cond in net.seen])
    return labels, conds


def test_condition_dropout_is_the_losss_joint_and_independent_of_the_split():
    labels, conds = _dropped(grad_accum=1)
    dropped = labels == -1
    assert 0 < int(dropped.sum()) < len(labels)
    assert bool((conds[dropped] == 0).all())  # label and image dropped together
    assert bool((labels[~dropped] >= 0).all())
    # the drops belong to (step, position in the global batch), not to the micro-batch
    split_labels, split_conds = _dropped(grad_accum=3)
    assert torch.equal(labels, split_labels) and torch.equal(conds, split_conds)


def test_label_dropout_is_the_former_name_of_cond_drop_prob():
    data = TensorImageDataset(tiny_data(12), labels=torch.arange(12) % 3)
    model = DenoiseDiffusion(Recorder(num_classes=3), LinearSchedule(50))
    with pytest.warns(FutureWarning, match="cond_drop_prob"):
        trainer = Trainer(model, data, batch_size=12, lr=1e-3, steps=1, label_dropout=0.5, **QUIET)
    assert trainer.cond_drop_prob == 0.5 and trainer.config()["cond_drop_prob"] == 0.5
    with pytest.raises(ValueError, match="pass only cond_drop_prob"):
        Trainer(model, data, batch_size=12, lr=1e-3, steps=1, label_dropout=0.5,
                cond_drop_prob=0.1, **QUIET)  # fmt: skip


@pytest.mark.parametrize(
    ("net", "form", "message"),
    [
        (dict(num_classes=3), "image", "class-conditional \\(num_classes=3\\), but the dataset"),
        (dict(num_classes=2), "image, label", "has 3 classes, more than the network's"),
        (dict(cond_channels=1), "image, label", "takes conditioning images \\(cond_channels=1\\)"),
        (dict(), "image, cond", "the network takes none \\(cond_channels=0\\)"),
        (dict(cond_channels=3), "image, cond", "build it with cond_channels=1"),
    ],
)
def test_a_network_and_data_whose_conditions_differ_are_refused(net, form, message):
    data = _Items(_conditional_items(form))
    if form == "image, label":
        data = TensorImageDataset(torch.stack(_conditional_items("image")), torch.arange(12) % 3)
    model = DenoiseDiffusion(UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,),
                                  groups=4, mid_attn=False, **net), LinearSchedule(50))  # fmt: skip
    with pytest.raises(ValueError, match=message):
        Trainer(model, data, batch_size=4, lr=1e-3, steps=1, **QUIET)


def test_cond_drop_prob_needs_a_condition():
    with pytest.raises(ValueError, match="drops conditions, but this model has none"):
        Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, cond_drop_prob=0.1,
                **QUIET)  # fmt: skip


def test_sample_grids_of_conditional_models_show_their_conditions():
    net = Recorder(num_classes=3, cond_channels=1)
    model = DenoiseDiffusion(net, LinearSchedule(50))
    trainer = Trainer(model, _Items(_conditional_items("mapping")), batch_size=4, lr=1e-3,
                      steps=1, **QUIET)  # fmt: skip
    net.seen.clear()
    trainer.sample(5, steps=2, use_ema=False)
    labels, cond = net.seen[0]
    assert labels.tolist() == [0, 1, 2, 0, 1]  # the classes in turn
    spread = torch.linspace(-1, 1, 12)[[0, 3, 6, 8, 11]]  # 5 items spread over the 12
    torch.testing.assert_close(cond[:, 0, 0, 0], spread)
    assert trainer._grid_columns(64) == 3  # one column per class


def test_resume_of_a_conditional_run_is_bit_exact(tmp_path, monkeypatch):
    def model(seed: int = 0) -> DenoiseDiffusion:
        return tiny_model(seed, num_classes=3, cond_channels=1)

    images = tiny_data(20)
    data = TensorImageDataset(images, torch.arange(20) % 3, cond=images.flip(-1))
    settings = dict(batch_size=8, lr=2e-3, steps=6, grad_accum=2, checkpoint_every=3,
                    cond_drop_prob=0.3, ema_decay=0.9, **QUIET)  # fmt: skip
    straight = Trainer(model(), data, out_dir=tmp_path / "a", **settings)
    straight.train()

    interrupted = Trainer(model(), data, out_dir=tmp_path / "b", **settings)
    real_step = Trainer._train_step

    def crash_at_step_4(self, batches):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    monkeypatch.setattr(Trainer, "_train_step", real_step)

    resumed = Trainer(model(seed=5), data, out_dir=tmp_path / "b", **settings)
    resumed.resume()
    assert resumed.step == 3
    resumed.train()
    a, b = state_of(straight), state_of(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    # the condition dropout may change on resume, and is reported; the conditions may not
    changed = Trainer(model(), data, out_dir=tmp_path / "b", **{**settings, "steps": 7,
                      "cond_drop_prob": 0.1})  # fmt: skip
    changed.resume()
    assert changed.resume_report.changed["cond_drop_prob"] == (0.3, 0.1)
    plain = Trainer(tiny_model(), images, batch_size=8, lr=2e-3, steps=7, **QUIET)
    with pytest.raises(ResumeMismatchError, match="num_classes") as caught:
        plain.resume(tmp_path / "b")
    assert "cond_channels" in str(caught.value)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision):
    trainer = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=2,
                      precision=precision, **QUIET)  # fmt: skip
    result = trainer.train()
    assert math.isfinite(result.loss)
    assert (trainer.scaler is not None) == (precision == "fp16")
    assert default_precision("cpu") is Precision.FP32


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match=r"\[-1, 1\]|value_range"):
        Trainer(tiny_model(), tiny_data().add(1).div(2) + 0.01, batch_size=4, lr=1e-3, steps=1)
    with pytest.raises(ValueError, match="cannot take the dataset's 1x6x6"):
        Trainer(
            tiny_model(dim_mults=(1, 2, 2), attns=(False, False, False)),
            torch.zeros(4, 1, 6, 6) - 0.5,
            batch_size=4, lr=1e-3, steps=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        Trainer(tiny_model(), tiny_data(), batch_size=6, grad_accum=4, lr=1e-3, steps=1)
    with pytest.raises(ValueError, match="lr must be a positive"):
        Trainer(tiny_model(), tiny_data(), batch_size=4, lr=0.0, steps=1)
    with pytest.raises(ValueError, match="sample_steps"):
        Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, sample_steps=51)


def test_compile_is_opt_in_and_trains_the_same_weights():
    # the "eager" backend runs dynamo's graph capture without inductor's C++ build, so the
    # test is quick and the weights must equal those of the plain network
    settings = dict(batch_size=8, lr=1e-3, steps=2, **QUIET)
    plain = Trainer(tiny_model(), tiny_data(), **settings)
    assert plain.diffusion.net._compiled_call_impl is None  # opt-in
    compiled = Trainer(tiny_model(), tiny_data(), compile={"backend": "eager"}, **settings)
    assert compiled.diffusion.net._compiled_call_impl is not None
    assert compiled.ema.module._compiled_call_impl is None  # the EMA copy stays plain
    plain.train()
    compiled.train()
    for (key, a), b in zip(
        plain.diffusion.net.state_dict().items(),
        compiled.diffusion.net.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=key)
    with pytest.raises(TypeError, match="compile must be"):
        Trainer(tiny_model(), tiny_data(), compile="max-autotune", **settings)


# ------------------------------------------------------ checkpoints that can be trusted


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_nan_stop_never_names_a_damaged_checkpoint_as_the_last_good_one(tmp_path, monkeypatch):
    # finding 3: the checkpoint written at step 4 is damaged on disk before the NaN at step 5
    base = tiny_model()
    model = DenoiseDiffusion(NaNAfter(base.net, calls=5), base.schedule)
    trainer = Trainer(model, tiny_data(), batch_size=4, lr=1e-3, steps=10, out_dir=tmp_path,
                      checkpoint_every=2, **QUIET)  # fmt: skip
    real_step = Trainer._train_step

    def damage_then_step(self, batches):
        if self.step == 5:
            _flip_last_byte(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors")
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "_train_step", damage_then_step)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "the last good checkpoint is" not in message.split("step-00000004")[0]
    assert "step-00000004" in message and "damaged" in message
    assert "the newest valid one is" in message and message.endswith(
        "Try a lower learning rate or gradient clipping."
    )
    assert info.value.checkpoint == str(tmp_path / "checkpoints" / "step-00000002")


@pytest.mark.parametrize("damage", ["flip", "optimizer", "rng"])
def test_resume_refuses_a_damaged_checkpoint_and_falls_back_only_when_asked(tmp_path, damage):
    # finding 3: a flipped bit resumed silently; a deleted optimizer or rng file resumed
    # with fresh state (no longer exact)
    settings = dict(batch_size=4, lr=1e-3, steps=4, checkpoint_every=2, **QUIET)
    Trainer(tiny_model(), tiny_data(), out_dir=tmp_path, **settings).train()
    newest = tmp_path / "checkpoints" / "step-00000004"
    if damage == "flip":
        _flip_last_byte(newest / "model.safetensors")
    else:
        (newest / f"{damage}.safetensors").unlink()
    resumed = Trainer(tiny_model(), tiny_data(), out_dir=tmp_path, **settings)
    with pytest.raises(ValueError, match="step-00000004 is damaged") as info:
        resumed.resume()
    assert "step-00000002" in str(info.value)  # the valid ones are listed
    with pytest.warns(UserWarning) as notes:
        resumed.resume(fallback=True)
    assert [str(n.message).split(" ")[0] for n in notes] == ["skipped", "resumed"]
    assert "step-00000004" in str(notes[0].message) and "abandoned" in str(notes[1].message)
    assert resumed.step == 2
    assert resumed.resume_report is not None and resumed.resume_report.verified


def test_resuming_an_older_checkpoint_moves_the_newer_branch_aside(tmp_path):
    # finding 5: the newer, stale branch stayed in place and won the next lookup
    from diffusionkit.training import find_checkpoint

    settings = dict(batch_size=4, lr=1e-3, checkpoint_every=2, keep_checkpoints=None, **QUIET)
    Trainer(tiny_model(), tiny_data(), out_dir=tmp_path, steps=6, **settings).train()
    older = tmp_path / "checkpoints" / "step-00000002"
    branch = Trainer(tiny_model(), tiny_data(), out_dir=tmp_path, steps=3, **settings)
    with pytest.warns(UserWarning, match="moved the newer checkpoints"):
        branch.resume(older)
    branch.train()
    assert find_checkpoint(tmp_path).name == "step-00000003"
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "step-00000002",
        "step-00000003",
    ]
    kept = sorted(p.name for p in (tmp_path / "checkpoints" / "abandoned").iterdir())
    assert kept == ["step-00000004", "step-00000006"]  # moved, not deleted


def test_a_full_disk_names_the_file_and_the_checkpoint_kept(tmp_path, monkeypatch):
    import errno

    from diffusionkit.training import checkpoint as ckpt_mod

    trainer = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=4,
                      out_dir=tmp_path, checkpoint_every=2, **QUIET)  # fmt: skip
    real_write = ckpt_mod._write_tensor_file

    def full_at_step_4(path, tensors):
        if "step-00000004" in str(path.parent):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, tensors)

    monkeypatch.setattr(ckpt_mod, "_write_tensor_file", full_at_step_4)
    with pytest.raises(OSError) as info:
        trainer.train()
    message = str(info.value)
    assert "model.safetensors" in message and "disk is full" in message
    assert "newest checkpoint kept is" in message and "step-00000002" in message
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]


# ------------------------------------------------------------------- the run folder


def test_a_new_run_refuses_a_folder_that_holds_something_else(tmp_path):
    # finding 6 (the run folder's part): foreign files, a foreign config.json, another run
    (tmp_path / "notes.txt").write_text("my notes")
    trainer = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1,
                      out_dir=tmp_path, **QUIET)  # fmt: skip
    with pytest.raises(ValueError, match=r"notes\.txt"):
        trainer.train()
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "checkpoints").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    trainer = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, out_dir=other,
                      **QUIET)  # fmt: skip
    with pytest.raises(ValueError, match="not a diffusionkit model's config"):
        trainer.train()
    assert (other / "config.json").read_text() == '{"model_type": "bert"}'

    done = tmp_path / "done"
    Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, out_dir=done,
            **QUIET).train()  # fmt: skip
    again = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=2, out_dir=done,
                    **QUIET)  # fmt: skip
    with pytest.raises(ValueError, match="already holds a training run"):
        again.train()


def test_a_run_folder_holds_only_what_a_run_writes(tmp_path):
    # every entry a full run writes is one the folder check knows (so a resume accepts it)
    from diffusionkit.training.run_folder import RUN_ENTRIES

    Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=2, out_dir=tmp_path,
            sample_every=1, sample_count=4, progress=False).train()  # fmt: skip
    visible = {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert visible <= RUN_ENTRIES, visible - RUN_ENTRIES


def test_the_memory_estimate_refuses_a_run_that_cannot_fit(monkeypatch):
    from diffusionkit.training import trainer as trainer_mod

    trainer = Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, **QUIET)
    estimate = trainer.memory
    assert estimate.activations is not None and estimate.activations > 0
    assert estimate.optimizer == 2 * estimate.gradients
    assert "activations" in estimate.describe() and "AdamW" in estimate.describe()
    # activations grow with the batch: measured on the meta device at two batch sizes
    bigger = Trainer(tiny_model(), tiny_data(), batch_size=16, lr=1e-3, steps=1, **QUIET)
    assert bigger.memory.activations > 3 * estimate.activations
    monkeypatch.setattr(trainer_mod, "physical_memory", lambda device: 1 << 10)
    with pytest.raises(ValueError, match=r"more than the 1\.0 KiB of memory on cpu"):
        Trainer(tiny_model(), tiny_data(), batch_size=4, lr=1e-3, steps=1, **QUIET)


def test_the_ema_model_keeps_every_part_of_the_trained_one():
    """The samples of a run (grids, samples.png, the GIF) come from the EMA model: it must clip,
    weight and predict as the trained model does (it once dropped x0_processing, and the main
    job's samples.png came out with blank and noisy digits)."""
    from diffusionkit import ClipX0, DDIMSampler, MinSNRWeighting

    model = tiny_model()
    model = DenoiseDiffusion(
        model.net, LinearSchedule(50), DDIMSampler(0.3), "v", MinSNRWeighting(3.0), ClipX0()
    )
    trainer = Trainer(model, tiny_data(), batch_size=4, lr=1e-3, steps=1, **QUIET)
    ema = trainer.ema_diffusion()
    assert ema.net is trainer.ema.module
    for name in ("schedule", "sampler", "prediction", "weighting", "x0_processing"):
        assert getattr(ema, name) == getattr(model, name), name
