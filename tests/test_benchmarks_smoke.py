"""Smoke tests of the benchmark harness (benchmarks/): timing, reporting, a 2-step quality run.

The benchmarks themselves are never timed here. Parts that need lucidrains'
denoising-diffusion-pytorch (only in the ``benchmarks`` extra) skip when it is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import (  # noqa: E402
    common,
    memory,
    quality_budget,
    report,
    sampling_overhead,
    solvers,
)
from diffusionkit import ClipX0  # noqa: E402

needs_lucidrains = pytest.mark.skipif(
    importlib.util.find_spec("denoising_diffusion_pytorch") is None,
    reason="denoising-diffusion-pytorch is not installed (benchmarks extra)",
)
MICRO = quality_budget.Budget(timesteps=25, checkpoints=(1, 2), batch=4, n_samples=12, seeds=(0,))


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """The harness fixes torch's thread count; give the rest of the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- timing
def test_time_alternating_rotates_the_order_and_counts_runs():
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = common.time_alternating(fns, repeats=6, warmup=2)
    assert calls[:6] == list("abcabc")  # warm-up, in order
    rounds = [calls[6 + 3 * r : 9 + 3 * r] for r in range(6)]
    assert [r[0] for r in rounds] == list("abcabc")  # each name starts equally often
    assert all(sorted(r) == list("abc") for r in rounds)
    for t in timings.values():
        assert len(t.times) == 6
        assert t.min <= t.median <= t.max
        assert t.to_dict()["n"] == 6


def test_time_alternating_rejects_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        common.time_alternating({"a": lambda: None}, repeats=0)


def test_machine_info_names_the_cpu_and_threads():
    info = common.machine_info(torch.device("cpu"))
    assert info["cpu"] and info["torch_threads"] == torch.get_num_threads()
    assert info["versions"]["torch"] is not None


def test_cpu_features_reads_the_flags_line(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: X\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 sse\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )
    assert common.cpu_features() == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert "avx512_bf16" in common.machine_info(torch.device("cpu"))["cpu_features"]


def test_levers_time_a_bf16_training_step_against_fp32():
    from benchmarks import levers

    torch.manual_seed(0)
    net = levers.UNet(**levers.DIGITS)
    nets = {"default": net, "bf16 autocast": levers.copy.deepcopy(net)}
    before = [p.detach().clone() for p in nets["bf16 autocast"].parameters()]
    r = levers._compare(nets, 2, 8, 1, True, torch.device("cpu"), autocast="bf16 autocast")
    assert set(r["ratio_to_default"]) == {"default", "bf16 autocast"}
    assert r["ratio_to_default"]["default"] == 1.0 and r["ratio_to_default"]["bf16 autocast"] > 0
    after = list(nets["bf16 autocast"].parameters())
    assert all(p.dtype == torch.float32 for p in after)  # autocast leaves the weights fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # trained


def test_net_timer_counts_exactly_the_calls_and_removes_its_hooks():
    net = nn.Linear(3, 3)
    timer = sampling_overhead.NetTimer(net, torch.device("cpu"))
    for _ in range(4):
        net(torch.ones(2, 3))
    assert timer.calls == 4 and timer.seconds > 0
    assert timer.first_args is not None and timer.first_args[0].shape == (2, 3)
    timer.remove()
    net(torch.ones(2, 3))
    assert timer.calls == 4


def test_flop_count_of_a_linear_layer():
    from benchmarks.speed import count_flops

    net = nn.Linear(8, 5, bias=False)
    assert count_flops(lambda: net(torch.ones(3, 8))) == 2 * 3 * 8 * 5


def test_same_weights_pair_loads_diffusers_weights_exactly():
    pytest.importorskip("diffusers")
    from benchmarks.speed import same_weights_pair

    config = dict(sampling_overhead.SMALL_UNET, block_out_channels=(8, 16, 16), norm_num_groups=4)
    theirs, ours, diff = same_weights_pair(config, seed=0, device=torch.device("cpu"))
    assert common.n_params(theirs) == common.n_params(ours)
    assert diff < 1e-5


def test_memory_child_measures_a_workload():
    r = memory.child("diffusionkit", "small", "train", batch=2, threads=1, device="cpu")
    assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 50
    assert r["seconds"] > 0


# ---------------------------------------------------------------------------- quality loop
def test_two_step_quality_run_scores_every_checkpoint():
    r = quality_budget.train_and_score("diffusionkit (eps, linear)", 0, MICRO)
    assert set(r["scores"]) == {"1", "2"}
    for s in r["scores"].values():
        assert s["fd"] > 0 and s["n_samples"] == MICRO.n_samples
    assert r["parameters"] == 252_545


@needs_lucidrains
@pytest.mark.parametrize(
    "label", ["diffusionkit (v, sigmoid)", "diffusers (v, sigmoid)", "lucidrains (eps, linear)"]
)
def test_two_step_quality_run_of_the_peers(label):
    r = quality_budget.train_and_score(label, 0, MICRO)
    assert r["scores"]["2"]["fd"] > 0


_POOL_PARENT = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from benchmarks.quality_budget import _worker_init
pool = ProcessPoolExecutor(
    1, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(os.getpid(),)
)
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_quality_workers_exit_when_their_parent_is_killed():
    import signal
    import subprocess
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", _POOL_PARENT, str(ROOT)], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(parent.stdout.readline())
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)  # no clean shutdown of the pool
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker)
    finally:
        parent.kill()


def test_budget_rejects_unsorted_checkpoints():
    with pytest.raises(ValueError, match="ascending"):
        quality_budget.Budget(checkpoints=(10, 5))


def test_budget_rejects_an_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        quality_budget.Budget(dataset="cifar10")


def test_bad_quality_option_fails_before_any_benchmark_runs(capsys):
    from benchmarks import run

    with pytest.raises(SystemExit) as exit_info:
        run.main(["--only", "quality", "--quality-steps", "10", "5", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "ascending" in capsys.readouterr().err


def test_report_only_redraws_from_the_json_and_rejects_what_it_cannot_do(tmp_path, capsys):
    from benchmarks import run

    for argv, message in (
        (["--report-only", "--out", str(tmp_path)], "no results to redraw"),
        (["--report-only", "--only", "speed", "--out", str(tmp_path)], "drop --only"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    report.write_results(_fake_results(), tmp_path)
    (tmp_path / "latest.md").unlink()
    assert run.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert "| forward b16 | 800.0 (800.0-800.0) |" in (tmp_path / "latest.md").read_text()


fashion_installed = pytest.mark.skipif(
    not (Path("/usr/share/datasets/fashion-mnist") / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)


@fashion_installed
def test_two_step_fashion_run_scores_against_the_official_test_set():
    budget = dataclasses.replace(MICRO, dataset="fashion-mnist")
    r = quality_budget.train_and_score("diffusionkit (v, sigmoid)", 0, budget)
    assert r["scores"]["2"]["n_reference"] == 10_000
    assert r["scores"]["2"]["n_samples"] == MICRO.n_samples and r["scores"]["2"]["fd"] > 0


def test_fashion_section_without_its_data_is_skipped_with_the_reason(monkeypatch, tmp_path):
    from benchmarks import quality_fashion
    from benchmarks.quality import fashion

    monkeypatch.setattr(fashion, "FASHION_MNIST_DIR", tmp_path / "absent")
    ctx = common.Context(quick=True, device=torch.device("cpu"), threads=1, out_dir=tmp_path)
    result = quality_fashion.run(ctx)
    assert "apt-get install dataset-fashion-mnist" in result["skipped"]
    assert report._quality_md(result) == [f"Not run: {result['skipped']}"]


def test_every_library_runs_in_both_settings():
    settings = {(e.library, e.setting) for e in quality_budget.ENTRIES.values()}
    libraries = {e.library for e in quality_budget.ENTRIES.values()}
    assert settings == {
        (lib, s) for lib in libraries for s in (quality_budget.EPS_LINEAR, quality_budget.V_SIGMOID)
    }


def test_quality_settings_select_one_configuration_per_library():
    labels = quality_budget.selected_labels((quality_budget.V_SIGMOID,))
    assert labels == (
        "diffusionkit (v, sigmoid)",
        "diffusers (v, sigmoid)",
        "lucidrains (v, sigmoid)",
    )
    assert quality_budget.selected_labels() == tuple(quality_budget.ENTRIES)


def test_diffusers_sigmoid_entry_gets_the_same_betas_as_diffusionkit():
    pytest.importorskip("diffusers")
    from diffusionkit import SigmoidSchedule

    c = quality_budget.ENTRIES["diffusers (v, sigmoid)"].build(MICRO, 0)
    assert isinstance(c, quality_budget.DiffusersContestant)
    ours = SigmoidSchedule(MICRO.timesteps).betas.float()
    torch.testing.assert_close(c.scheduler.betas, ours)
    assert c.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("label", ["diffusionkit (eps, linear)", "diffusionkit (v, sigmoid)"])
def test_diffusionkit_entries_clip_x0_while_sampling_as_the_peers_do(label):
    c = quality_budget.ENTRIES[label].build(MICRO, 0)
    assert isinstance(c, quality_budget.DiffusionkitContestant)
    assert c.model.x0_processing == ClipX0()


def _fd(library, setting, mean, std):
    return {
        "library": library,
        "setting": setting,
        "checkpoints": {"2": {"fd": {"mean": mean, "std": std}}},
    }


def test_verdict_compares_best_with_best_within_the_spread():
    configs = {
        "dk eps": _fd("diffusionkit", "eps", 0.90, 0.02),
        "dk v": _fd("diffusionkit", "v", 0.50, 0.02),
        "a": _fd("diffusers", "eps", 0.47, 0.05),
        "b": _fd("lucidrains", "v", 0.90, 0.01),
    }
    three_seeds = dataclasses.replace(MICRO, seeds=(0, 1, 2))
    v = quality_budget.verdict(configs, three_seeds)
    assert v["diffusionkit"] == "dk v" and v["best_peer"] == "a" and v["met"]
    # like against like: dk eps (0.90) is worse than a (0.47 + 0.05); dk v beats b
    assert not v["by_setting"]["eps"]["met"] and v["by_setting"]["eps"]["best_peer"] == "a"
    assert v["by_setting"]["v"]["met"] and v["by_setting"]["v"]["best_peer"] == "b"
    configs["a"] = _fd("diffusers", "eps", 0.40, 0.05)
    assert quality_budget.verdict(configs, three_seeds)["met"] is False
    # one seed: compared, but not judged (no spread to judge within)
    one = quality_budget.verdict(configs, MICRO)
    assert one["met"] is None and one["best_peer"] == "a"
    assert all(c["met"] is None for c in one["by_setting"].values())


def test_one_seed_report_prints_values_without_a_spread_and_judges_nothing(tmp_path):
    results = _fake_results()
    quality = results["benchmarks"]["quality"]["result"]
    quality["budget"]["checkpoints"] = [2]
    for c in quality["configs"].values():
        c["checkpoints"] = {"2": c["checkpoints"]["2"]}
    quality["verdict"] = {
        "checkpoint": 2,
        "diffusionkit": "diffusionkit",
        "diffusionkit_fd": 0.5,
        "best_peer": "diffusers",
        "best_peer_fd": 0.4,
        "margin": 0.0,
        "met": False,  # as stored by an older harness
        "by_setting": {},
    }
    md = "\n".join(report._quality_md(quality))
    assert "| diffusionkit | 252,545 | 0.500 | " in md and "+-" not in md.split("Settings")[0]
    assert "Target not judged: one seed" in md and "**not met**" not in md
    baseline = next(line for line in md.splitlines() if "baseline: train real" in line)
    assert baseline.count("|") == 7  # 6 cells: the FD under the FD column, not under KID
    assert "| *baseline: train real* | | 0.200 | 0.2000 |" in baseline


def test_verdict_without_peers_is_undecided():
    configs = {"dk": _fd("diffusionkit", "eps", 0.9, 0.0)}
    assert quality_budget.verdict(configs, MICRO) == {"met": None}


# ---------------------------------------------------------------------------- report
def _timing(ms: float) -> dict:
    return {"median_s": ms / 1e3, "min_s": ms / 1e3, "max_s": ms / 1e3, "n": 1, "times_s": [ms]}


def _fake_results() -> dict:
    meta = {
        "command": "python benchmarks/run.py",
        "quick": False,
        "machine": common.machine_info(torch.device("cpu")),
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:10:00+00:00",
        "load_start": 0.1,
        "load_end": 0.2,
    }
    case = {
        "case": "forward b16",
        "batch": 16,
        "gflop_per_call": 198.0,
        "timings": {"diffusers": _timing(800), "diffusionkit": _timing(900)},
        "ratio": 1.125,
        "diffusionkit_gflops": 220.0,
        "diffusers_gflops": 247.0,
        "fraction_of_conv_peak": 0.73,
    }
    speed = {
        "parameters": 35_746_307,
        "max_abs_output_diff": 1e-6,
        "repeats": 1,
        "peaks": {"matmul_peak_gflops": 320.0, "conv_peak_gflops": 300.0},
        "cases": [case],
    }
    lib = {
        "parameters": 1000,
        "ms_per_step": 2.0,
        "overhead_pct": 0.3,
        "overhead_pct_min": 0.2,
        "overhead_pct_max": 0.4,
        "overhead_ms_per_step": 0.006,
        "overhead_pct_vs_replay": 0.3,
    }
    overhead = {
        "steps": 100,
        "repeats": 1,
        "cases": {"b64": {"diffusers": dict(lib, overhead_pct=2.5), "diffusionkit": lib}},
    }
    row = {
        "model": "small",
        "phase": "train",
        "batch": 64,
        "library": "diffusionkit",
        "peak_rss_mb": 900.0,
        "workload_rss_mb": 300.0,
        "baseline_rss_mb": 600.0,
        "seconds": 1.0,
    }
    mem = {"train_steps": 3, "sample_steps": 25, "rows": [row]}
    stat = {"mean": 0.5, "std": 0.1, "min": 0.4, "max": 0.6, "values": [0.4, 0.5, 0.6]}
    ckpt = {m: stat for m in quality_budget.METRICS}
    configs = {
        "diffusionkit": {
            "library": "diffusionkit",
            "settings": "defaults",
            "parameters": 252_545,
            "checkpoints": {"1": ckpt, "2": ckpt},
        }
    }
    quality = {
        "budget": {
            "timesteps": 25,
            "checkpoints": [1, 2],
            "batch": 4,
            "n_samples": 12,
            "seeds": [0],
        },
        "optimizer": "AdamW",
        "configs": configs,
        "baselines": {"train real": {m: 0.2 for m in quality_budget.METRICS}},
    }
    levers = {
        "repeats": 1,
        "cpu_features": ["avx2", "avx512_bf16"],
        "cases": {
            "small train step b64": {
                "median_ms": {"default": 10.0},
                "ratio_to_default": {"default": 1.0, "bf16 autocast": 0.7},
            }
        },
    }
    sections = {
        "speed": speed,
        "sampling_overhead": overhead,
        "memory": mem,
        "quality": quality,
        "levers": levers,
    }
    return {
        "format_version": report.FORMAT_VERSION,
        "benchmarks": {k: {"meta": meta, "result": v} for k, v in sections.items()},
    }


def test_report_writes_json_markdown_and_a_small_chart(tmp_path):
    results = _fake_results()
    paths = report.write_results(results, tmp_path)
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(results))
    md = paths["md"].read_text()
    for title in ("Network speed", "Sampling loop overhead", "Peak memory", "Quality"):
        assert title in md
    # the 1.125 forward ratio misses its target; 0.3% overhead at batch 64 meets its own
    assert "| forward b16 | 800.0 (800.0-800.0) | 900.0 (900.0-900.0) | 1.125 |" in md
    assert "ratio <= 1.0: **not met**" in md and "<= 0.5%: met" in md
    assert "load average 0.1 at start, 0.2 at end" in md
    assert "| small train step b64 | 10.00 | bf16 autocast 0.700 |" in md
    assert "bf16 instructions: avx512_bf16." in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["png"].stat().st_size < 200_000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_replace_section_keeps_the_rest_of_the_document():
    doc = f"intro\n{report.BEGIN}\nold table\n{report.END}\noutro\n"
    new = report.replace_section(doc, "new table")
    assert new == f"intro\n{report.BEGIN}\nnew table\n{report.END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        report.replace_section("no markers here", "x")


# ---------------------------------------------------------------------------- layout lever
# The speed benchmark relies on UNet storing its convolutions channels_last from 32 channels up
# (docs/performance.md); a reloaded network must keep that layout and so compute bit for bit the
# same outputs as the saved one.
def _layout_net(dim: int) -> nn.Module:
    from diffusionkit import UNet

    torch.manual_seed(0)
    return UNet(in_channels=3, dim=dim, dim_mults=(1, 2), attns=(False, True), groups=8)


def test_wide_unet_stores_convolutions_channels_last_and_returns_nchw():
    net = _layout_net(32).eval()
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.conv_in.weight.is_contiguous()
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 9])
    nchw = _layout_net(32).eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        out = net(x, t)
        ref = nchw(x, t)
    assert out.is_contiguous()  # plain NCHW for the sampler's arithmetic
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)  # same function, other layout
    assert _layout_net(16).conv_in.weight.is_contiguous()  # narrow nets stay NCHW


@pytest.mark.parametrize("assign", [False, True])
def test_reloaded_unet_keeps_the_layout_and_computes_identically(assign):
    net = _layout_net(32).eval()
    state = {k: v.contiguous().clone() for k, v in net.state_dict().items()}  # as from a file
    if assign:
        with torch.device("meta"):
            loaded = _layout_net(32)
    else:
        loaded = _layout_net(32)
        torch.nn.init.zeros_(loaded.conv_in.weight)
    loaded.load_state_dict(state, strict=True, assign=assign)
    loaded.eval()
    assert loaded.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 9])
    with torch.inference_mode():
        assert torch.equal(net(x, t), loaded(x, t))


def test_forward_profile_shares_add_up_and_name_the_convolutions():
    from benchmarks import profile_forward

    rows = profile_forward.shares(batch=1, calls=1)
    assert abs(sum(share for _, share, _ in rows) - 1.0) < 1e-6
    calls = {name: count for name, _, count in rows}
    assert calls["aten::convolution"] == 65  # the CIFAR-10 U-Net's 3x3 and 1x1 convolutions


def test_loop_cost_times_the_loop_without_the_stub():
    from benchmarks import loop_cost

    assert loop_cost.loop_us_per_step(batch=2, evict=False, repeats=1) > 0
    net = loop_cost.StubNet(2, evict=True)
    x = torch.zeros(2, 3, 32, 32)
    assert torch.equal(net(x, torch.zeros(2)), net.out) and net.sweep[0] == 1.0


def test_solver_benchmark_scores_every_solver_of_both_libraries(tmp_path):
    """Benchmark 6 at micro scale: every diffusionkit solver and diffusers scheduler sampled
    from the same noise on one tiny model, scored, judged and drawn."""
    from benchmarks.quality import digits_split
    from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    model = DenoiseDiffusion(net, LinearSchedule(40), x0_processing=ClipX0())
    m = solvers.SolverModel(
        "tiny", "untrained", model, (1, 8, 8), digits_split().test_images[:64], lambda x: x
    )
    ctx = common.Context(
        quick=True, device=torch.device("cpu"), threads=1, out_dir=tmp_path, log=lambda s: None
    )
    result = solvers.quality(ctx, m, (5,), 16, (0,))
    assert set(result["diffusionkit"]) == set(solvers.OURS)
    assert set(result["diffusers"]) == set(solvers.THEIRS)
    assert result["diffusers"]["Heun"]["5"]["calls"] == 5  # 3 steps = 5 calls
    assert all(v["5"]["mean"] > 0 for v in result["diffusionkit"].values())
    assert result["verdict"]["5"]["met_vs_diffusers"] in (True, False)
    section = {"calls": [5], "n_samples": 16, "seeds": [0], "models": {"tiny": result}}
    text = "\n".join(report._solvers_md(section))
    assert "| diffusionkit | dpm++2m |" in text and "At 5 calls" in text
    report.solvers_chart(section, tmp_path / "solvers.png")
    assert (tmp_path / "solvers.png").stat().st_size > 1000
