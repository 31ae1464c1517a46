"""Turn benchmark results into ``latest.json``, a Markdown report, a PNG chart and doc sections.

The JSON holds one section per benchmark, each with its own run metadata (command, machine,
threads, load at start and end, time), so a partial re-run (``--only NAME``) replaces one
section and keeps the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from diffusionkit.utils.atomic import atomic_save, atomic_write_bytes

__all__ = [
    "TARGETS",
    "chart",
    "likelihood_chart",
    "load_results",
    "markdown",
    "replace_section",
    "solvers_chart",
    "write_atomic",
    "write_results",
]

FORMAT_VERSION = 1
BEGIN, END = "<!-- benchmark-results:begin -->", "<!-- benchmark-results:end -->"

#: the targets of issue 6, as stated to the reader
TARGETS = {
    "speed_ratio": 1.0,  # diffusionkit / diffusers time, forward and training step
    "speed_ratio_aim": 0.9,
    "conv_peak_fraction": 0.8,  # achieved GFLOP/s at batch 16 over the measured conv peak
    "overhead_pct": {"b1": 1.0, "b64": 0.5},
}


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename, readable by all)."""
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


def load_results(path: Path) -> dict[str, Any]:
    """The results file at ``path``, or an empty one."""
    if path.exists():
        results = json.loads(path.read_text())
        if results.get("format_version") == FORMAT_VERSION:
            return results
    return {"format_version": FORMAT_VERSION, "benchmarks": {}}


# ---------------------------------------------------------------------------- Markdown
def _ms(timing: dict[str, Any]) -> str:
    return (
        f"{timing['median_s'] * 1e3:.1f} ({timing['min_s'] * 1e3:.1f}-{timing['max_s'] * 1e3:.1f})"
    )


def _mark(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[ok]


def _meta_line(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    return (
        f"*{meta['finished'][:16].replace('T', ' ')} UTC, {m['cpu']} ({m['cpu_count']} cores), "
        f"{m['torch_threads']} torch threads, torch {m['versions']['torch']}, "
        f"diffusers {m['versions']['diffusers']}, denoising-diffusion-pytorch "
        f"{m['versions']['denoising-diffusion-pytorch']}; load average {meta['load_start']} at "
        f"start, {meta['load_end']} at end; `{meta['command']}`"
        + (" (quick: not for comparison)" if meta.get("quick") else "")
        + "*"
    )


def _speed_md(r: dict[str, Any]) -> list[str]:
    peaks = r["peaks"]
    lines = [
        f"DDPM CIFAR-10 U-Net ({r['parameters']:,} parameters), same weights in both libraries "
        f"(max output difference {r['max_abs_output_diff']:.1e}); milliseconds, median (min-max) "
        f"of {r['repeats']} alternating runs. Measured fp32 peaks: matmul "
        f"{peaks['matmul_peak_gflops']:.0f} GFLOP/s, 3x3 conv {peaks['conv_peak_gflops']:.0f} "
        "GFLOP/s.",
        "",
        "| case | diffusers ms | diffusionkit ms | ratio dk/diffusers | diffusionkit GFLOP/s | "
        "of conv peak | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        ok = c["ratio"] <= TARGETS["speed_ratio"]
        target = f"ratio <= 1.0: {_mark(ok)}"
        if c["batch"] == 16:
            peak_ok = c["fraction_of_conv_peak"] >= TARGETS["conv_peak_fraction"]
            target += f"; >= 80% of peak: {_mark(peak_ok)}"
        lines.append(
            f"| {c['case']} | {_ms(c['timings']['diffusers'])} | "
            f"{_ms(c['timings']['diffusionkit'])} | {c['ratio']:.3f} | "
            f"{c['diffusionkit_gflops']:.0f} | {c['fraction_of_conv_peak']:.0%} | {target} |"
        )
    for v in r.get("variants", []):
        lines.append(
            f"| {v['case']} | | {_ms(v['timing'])} | {v['ratio']:.3f} | "
            f"{v['gflops']:.0f} | {v['fraction_of_conv_peak']:.0%} | opt-in |"
        )
    return lines


def _overhead_md(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Full {r['steps']}-step ancestral chains, 32x32x3, ~1M-parameter U-Nets; overhead = "
        "(sampling time - network time) / network time, network time accumulated by forward "
        f'hooks; median (min-max) of {r["repeats"]} alternating runs. "replay": against a bare '
        "loop of the same number of network calls.",
        "",
        "| batch | library | parameters | ms per step | overhead % | overhead ms per step | "
        "vs replay % | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch, case in r["cases"].items():
        for name, c in case.items():
            if name.startswith("_"):
                continue
            target = ""
            if name == "diffusionkit":
                limit = TARGETS["overhead_pct"][batch]
                target = f"<= {limit}%: {_mark(c['overhead_pct'] <= limit)}"
            lines.append(
                f"| {batch[1:]} | {name} | {c['parameters']:,} | {c['ms_per_step']:.2f} | "
                f"{c['overhead_pct']:.2f} ({c['overhead_pct_min']:.2f} to "
                f"{c['overhead_pct_max']:.2f}) | {c['overhead_ms_per_step']:.3f} | "
                f"{c['overhead_pct_vs_replay']:.2f} | {target} |"
            )
    return lines


def _memory_md(r: dict[str, Any]) -> list[str]:
    cuda = any("cuda_peak_mb" in row for row in r["rows"])
    lines = [
        f"Each row in a fresh process. train: {r['train_steps']} AdamW steps; sample: the full "
        f'chain of a {r["sample_steps"]}-step schedule. Peak RSS in MB; "workload" = peak - RSS '
        "before the workload (libraries, weights and optimizer state loaded).",
        "",
        "| model | phase | batch | library | peak RSS | workload | seconds |"
        + (" CUDA peak |" if cuda else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for row in r["rows"]:
        line = (
            f"| {row['model']} | {row['phase']} | {row['batch']} | {row['library']} | "
            f"{row['peak_rss_mb']:.0f} | {row['workload_rss_mb']:.0f} | {row['seconds']:.1f} |"
        )
        if cuda:
            line += f" {row.get('cuda_peak_mb', float('nan')):.0f} |"
        lines.append(line)
    return lines


_DATASETS = {"digits": ("8x8 digits", "digits"), "fashion-mnist": ("28x28 Fashion-MNIST", "images")}


def _quality_md(r: dict[str, Any]) -> list[str]:
    if "skipped" in r:
        return [f"Not run: {r['skipped']}"]
    b = r["budget"]
    dataset = r.get("dataset", "digits")
    title, items = _DATASETS.get(dataset, (dataset, "images"))
    checkpoints = [str(c) for c in b["checkpoints"]]
    last = checkpoints[-1]
    # one seed has no spread: print the value alone, and judge nothing against it
    spread = len(b["seeds"]) > 1
    seeds = f"mean +- std over seeds {b['seeds']}" if spread else f"one seed ({b['seeds'][0]})"
    lines = [
        f"{title}, {b['batch']} images per step, T = {b['timesteps']} diffusion steps (full "
        f"chains), {b['n_samples']} samples per checkpoint scored against the "
        f"{int(r.get('n_reference', 540)):,} held-out {items}; {r['optimizer']}; {seeds}. "
        "Frechet distance (FD) and KID in the feature space of the shipped "
        f"{dataset} classifier (lower is better); precision / recall (higher is better).",
        "",
        "| configuration | params | "
        + " | ".join(f"FD @{c}" for c in checkpoints)
        + f" | KID @{last} | precision @{last} | recall @{last} |",
        "|---|---|" + "---|" * (len(checkpoints) + 3),
    ]
    for label, c in r["configs"].items():
        cells = [
            f"{c['checkpoints'][k]['fd']['mean']:.3f}"
            + (f" +- {c['checkpoints'][k]['fd']['std']:.3f}" if spread else "")
            for k in checkpoints
        ]
        end = c["checkpoints"][last]
        lines.append(
            f"| {label} | {c['parameters']:,} | "
            + " | ".join(cells)
            + f" | {end['kid']['mean']:.4f} | {end['precision']['mean']:.2f} | "
            f"{end['recall']['mean']:.2f} |"
        )
    for name, s in r["baselines"].items():
        fd_cells = [""] * (len(checkpoints) - 1) + [f"{s['fd']:.3f}"]  # under the last FD
        lines.append(
            f"| *baseline: {name}* | | {' | '.join(fd_cells)} | {s['kid']:.4f} | "
            f"{s['precision']:.2f} | {s['recall']:.2f} |"
        )
    lines.append("")
    lines.append(
        "Settings: " + "; ".join(f"**{k}**: {c['settings']}" for k, c in r["configs"].items()) + "."
    )
    v = r.get("verdict")
    if v and "best_peer" in v and not spread:
        lines += [
            "",
            f"Target not judged: one seed gives no spread to judge within. FD at "
            f"{v['checkpoint']} steps, best configuration against best configuration: "
            f"{v.get('diffusionkit', 'diffusionkit')} {v['diffusionkit_fd']:.3f} vs "
            f"{v['best_peer']} {v['best_peer_fd']:.3f}.",
        ]
    elif v and v.get("met") is not None:
        lines += [
            "",
            f"Target (FD at {v['checkpoint']} steps no worse than the best peer within the "
            f"spread), best configuration against best configuration: "
            f"{v.get('diffusionkit', 'diffusionkit')} {v['diffusionkit_fd']:.3f} vs "
            f"{v['best_peer']} {v['best_peer_fd']:.3f} (+- {v['margin']:.3f}): {_mark(v['met'])}.",
        ]
        by_setting = v.get("by_setting", {})
        if by_setting:
            lines += ["", "Like against like (same prediction target and schedule):", ""]
        for setting, c in by_setting.items():
            lines.append(
                f"- {setting}: {c['diffusionkit']} {c['diffusionkit_fd']:.3f} vs "
                f"{c['best_peer']} {c['best_peer_fd']:.3f} (+- {c['margin']:.3f}): "
                f"{_mark(c['met'])}"
            )
    return lines


def _features_sentence(r: dict[str, Any]) -> str:
    """What the CPU offers for bf16, which decides the bf16 lever (older results: nothing)."""
    if "cpu_features" not in r:
        return ""
    features = r["cpu_features"]
    bf16 = [f for f in features if "bf16" in f]
    listed = ", ".join(features) or "none of them reported"
    return f" CPU extensions: {listed}; bf16 instructions: {', '.join(bf16) or 'none'}."


def _levers_md(r: dict[str, Any]) -> list[str]:
    lines = [
        "Time of each lever relative to diffusionkit's default on the same weights and inputs "
        f"(median of {r['repeats']}+ alternating runs; below 1 = faster)." + _features_sentence(r),
        "",
        "| case | default ms | lever: time / default |",
        "|---|---|---|",
    ]
    for case, c in r["cases"].items():
        ratios = ", ".join(
            f"{k} {v:.3f}" for k, v in c["ratio_to_default"].items() if k != "default"
        )
        extra = f" (compiling took {c['compile_seconds']:.0f} s)" if "compile_seconds" in c else ""
        lines.append(f"| {case} | {c['median_ms']['default']:.2f} | {ratios}{extra} |")
    return lines


def _solvers_md(r: dict[str, Any]) -> list[str]:
    calls = [str(c) for c in r["calls"]]
    seeds = r["seeds"]
    lines = [
        f"Frechet distance (classifier features, lower is better) of {r['n_samples']} samples "
        f"against the held-out digits at {', '.join(calls)} network calls, mean over "
        f"{len(seeds)} starting-noise seed(s) {seeds}; every solver of both libraries on the "
        "same weights from the same starting noise, x0 clipped where the scheduler can "
        "(diffusers' Euler, Euler ancestral and Heun cannot). diffusers' Heun makes 2N - 1 "
        "calls: its row shows the calls it made when fewer.",
    ]
    for name, m in r["models"].items():
        full = m["full_chain"]["mean"]
        lines += [
            "",
            f"**{name}** ({m['description']}); full chain ({m['timesteps']} calls, DDPM): "
            f"FD {full:.3f}",
            "",
            "| library | solver | " + " | ".join(f"{c} calls" for c in calls) + " |",
            "|---|---|" + "---|" * len(calls),
        ]
        for library in ("diffusionkit", "diffusers"):
            for solver, by_calls in m[library].items():
                best = [
                    min(m[library], key=lambda k, c=c: m[library][k][c]["mean"]) == solver
                    for c in calls
                ]
                cells = []
                for c, is_best in zip(calls, best, strict=True):
                    cell = by_calls[c]
                    text = f"{cell['mean']:.3f}"
                    if cell["calls"] != int(c):
                        text += f" ({cell['calls']})"
                    cells.append(f"**{text}**" if is_best else text)
                lines.append(f"| {library} | {solver} | " + " | ".join(cells) + " |")
        v = m["verdict"]
        if "10" in v:
            t = v["10"]
            lines += [
                "",
                f"At 10 calls: diffusionkit {t['diffusionkit']} {t['diffusionkit_fd']:.3f} vs "
                f"diffusers {t['diffusers']} {t['diffusers_fd']:.3f} (no worse: "
                f"{_mark(t['met_vs_diffusers'])}); within 10% of the full chain "
                f"({1.1 * t['full_chain_fd']:.3f}): {_mark(t['met_vs_full_chain'])}.",
            ]
        if "5" in v:
            t = v["5"]
            lines.append(
                f"At 5 calls: diffusionkit {t['diffusionkit']} {t['diffusionkit_fd']:.3f} vs "
                f"diffusers {t['diffusers']} {t['diffusers_fd']:.3f} (below: "
                f"{_mark(t['met_vs_diffusers'])})."
            )
    o = r.get("overhead")
    if o:
        lines += [
            "",
            f"Loop overhead of each diffusionkit solver: batch {o['batch']}, {o['calls']} calls, "
            "the ~1.1M-parameter U-Net of benchmark 2 at 32x32x3 (median, min-max); target "
            "<= 1% of network time.",
            "",
            "| solver | overhead % | ms per call | target |",
            "|---|---|---|---|",
        ]
        for solver, c in o["solvers"].items():
            ok = c["overhead_pct"] <= 1.0
            lines.append(
                f"| {solver} | {c['overhead_pct']:.2f} ({c['overhead_pct_min']:.2f} to "
                f"{c['overhead_pct_max']:.2f}) | {c['ms_per_call']:.1f} | {_mark(ok)} |"
            )
    return lines


def _conditional_md(r: dict[str, Any]) -> list[str]:
    d = r["digits"]
    lines = [
        f"**Class-conditional digits** (`{d['command']}`): {d['per_class']} samples of each "
        f"class per seed, seeds {d['seeds']}, the same starting noise at every guidance scale; "
        "accuracy = share of samples the digits classifier assigns to the label asked for "
        f"(it scores {d['real_accuracy']:.3f} on real held-out digits); FD of all samples to "
        "the held-out digits (lower is better). Scale 0 is unconditional, 1 plain "
        "conditional.",
    ]
    for name, s in d["samplers"].items():
        lines += [
            "",
            f"*{name}*",
            "",
            "| guidance scale | accuracy | lowest class accuracy (class) | FD |",
            "|---|---|---|---|",
        ]
        for scale, row in s["scales"].items():
            per = row["per_class"]
            worst = min(range(len(per)), key=per.__getitem__)
            accuracy = f"{row['accuracy']:.3f}"
            lines.append(
                f"| {scale} | {f'**{accuracy}**' if scale == s['best_scale'] else accuracy} | "
                f"{per[worst]:.2f} ({worst}) | {row['fd']:.2f} |"
            )
        best = s["scales"][s["best_scale"]]["accuracy"]
        lines += ["", f"At least 95% of the asked class at the best scale: {_mark(best >= 0.95)}."]
    sr = r["super_resolution"]
    lines.append("")
    if "skipped" in sr:
        return [*lines, f"**2x super-resolution of Fashion-MNIST**: skipped ({sr['skipped']})."]
    lines += [
        f"**2x super-resolution of Fashion-MNIST** (`{sr['command']}`): {sr['images']} held-out "
        "14x14 inputs; FD of the Fashion-MNIST classifier's features to the 10,000 test images, "
        "its accuracy on the outputs, PSNR to the true 28x28 image, and PSNR of the output's "
        f"2x2 means to the input (consistency); diffusionkit rows: mean of seeds {sr['seeds']}.",
        "",
        "| method | FD | accuracy | PSNR (dB) | PSNR to input (dB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in sr["rows"].items():
        psnr = "exact" if row["psnr"] >= 99 else f"{row['psnr']:.2f}"
        lines.append(
            f"| {name} | {row['fd']:.2f} | {row['accuracy']:.3f} | {psnr} | "
            f"{row['input_psnr']:.2f} |"
        )
    return lines


def _likelihood_md(r: dict[str, Any]) -> list[str]:
    calls, at = r["calls"], r["fd_calls"]
    lines = [
        "Pairs of models trained alike (`diffusionkit train --data digits [--learned-variance]`, "
        "the main job's settings at three budgets); bits/dim of the bound on the 359 held-out "
        "digits (8-bit, all T terms; mean ± standard error); FD of "
        f"{r['n_samples']} samples of the model's DDPM sampler (which uses the learned variance) "
        f"at each number of network calls, mean of seeds {r['seeds']}, and of seeds "
        f"{r['target_seeds']} at {at} calls (lower is better).",
        "",
        "| budget | variance | bits/dim | " + " | ".join(f"FD, {c} calls" for c in calls) + " |",
        "|---|---|---|" + "---|" * len(calls),
    ]
    for budget in r["budgets"]:
        for name, row in budget["rows"].items():
            fds = " | ".join(f"{row['fd'][str(c)]['fd']:.3f}" for c in calls)
            lines.append(
                f"| {budget['name']} | {name} | {row['bpd']:.3f} ± {row['bpd_stderr']:.3f} | "
                f"{fds} |"
            )
    lines += [
        "",
        f"At {at} calls, seed by seed (the same starting noise for both models): the learned "
        "variance's FD minus the fixed one's, and the same for the learned-variance network "
        "sampled with the fixed beta_tilde (its prediction alone), mean ± standard error over "
        f"{len(r['target_seeds'])} seeds (negative: better than the fixed-variance model).",
        "",
        "| budget | fixed | learned | learned − fixed (seeds won) | learned network, "
        "beta_tilde | its − fixed |",
        "|---|---|---|---|---|---|",
    ]
    for budget in r["budgets"]:
        rows, d, p = budget["rows"], budget["fd_difference"], budget["fd_difference_prediction"]
        lines.append(
            f"| {budget['name']} | {rows['fixed (beta_tilde)']['fd'][str(at)]['fd']:.3f} | "
            f"{rows['learned']['fd'][str(at)]['fd']:.3f} | {d['mean']:+.3f} ± {d['stderr']:.3f} "
            f"({d['wins']} of {d['n']}) | {budget['learned_prediction_fd']['fd']:.3f} | "
            f"{p['mean']:+.3f} ± {p['stderr']:.3f} |"
        )
    # (budget, variance, cost) of the pairs whose cost was measured
    timed = [
        (b["name"], name, row["cost"])
        for b in r["budgets"]
        for name, row in b["rows"].items()
        if "cost" in row
    ]
    lines += [""]
    if timed:
        ratios = ", ".join(f"{name} {c['ratio']:.2f}" for _, name, c in timed)
        lines += [
            f"NLL over all T terms / sampling with all T steps, 64 images ({timed[0][0]}): "
            f"{ratios}.",
            "",
        ]
    worst_ratio = max((c["ratio"] for _, _, c in timed), default=float("inf"))
    wins = ", ".join(f"{b['name']}: {_mark(b['fd_met'])}" for b in r["budgets"])
    lines.append(
        f"Learned variance lowers bits/dim: {_mark(r['bpd_met'])}. Learned variance wins on FD "
        f"at {at} calls with the same sampler: {wins}. NLL over all T terms within 2x of "
        f"sampling with all T steps: {_mark(worst_ratio <= 2.0)}."
    )
    return lines


_SECTIONS = {
    "speed": ("1. Network speed, same weights", _speed_md),
    "sampling_overhead": ("2. Sampling loop overhead", _overhead_md),
    "memory": ("3. Peak memory", _memory_md),
    "quality": ("4. Quality at equal budget", _quality_md),
    "quality_fashion": ("5. Quality at equal budget, Fashion-MNIST", _quality_md),
    "solvers": ("6. Quality against network calls: few-step solvers", _solvers_md),
    "levers": ("Performance levers", _levers_md),
    "conditional": ("7. Conditional models: guidance and super-resolution", _conditional_md),
    "likelihood": ("8. Learned variances: likelihood and quality", _likelihood_md),
}


def markdown(results: dict[str, Any], heading: str = "###") -> str:
    """The Markdown report of every benchmark section present in ``results``."""
    parts: list[str] = []
    for name, (title, render) in _SECTIONS.items():
        section = results["benchmarks"].get(name)
        if section is None:
            continue
        parts += [
            f"{heading} {title}",
            "",
            *render(section["result"]),
            "",
            _meta_line(section["meta"]),
            "",
        ]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------------------- chart
LIBRARY_COLORS = {"diffusers": "tab:orange", "diffusionkit": "tab:blue", "lucidrains": "tab:green"}


def chart(results: dict[str, Any], path: Path) -> None:
    """A small 2x3 PNG: speed ratios, sampling overhead, memory, quality vs steps (2 datasets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = results["benchmarks"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    ax = axes[0][0]
    if "speed" in bench:
        cases = bench["speed"]["result"]["cases"]
        names = [c["case"] for c in cases]
        ratios = [c["ratio"] for c in cases]
        ax.bar(names, ratios, color="tab:blue")
        ax.axhline(1.0, color="k", lw=1)
        ax.axhline(0.9, color="k", lw=1, ls="--")
        for i, r in enumerate(ratios):
            ax.text(i, r, f"{r:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_ylabel("time diffusionkit / diffusers")
        ax.set_title("1. CIFAR-10 U-Net, same weights (lower is faster)", fontsize=10)
    ax = axes[0][1]
    if "sampling_overhead" in bench:
        cases = bench["sampling_overhead"]["result"]["cases"]
        libs = [k for k in next(iter(cases.values())) if not k.startswith("_")]
        width = 0.8 / len(libs)
        for j, lib in enumerate(libs):
            xs = [i + j * width for i in range(len(cases))]
            overheads = [cases[b][lib]["overhead_pct"] for b in cases]
            ax.bar(xs, overheads, width, label=lib, color=LIBRARY_COLORS.get(lib, "grey"))
        ax.set_xticks([i + width * (len(libs) - 1) / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"batch {b[1:]}" for b in cases])
        ax.set_ylabel("loop overhead, % of network time")
        ax.set_title("2. Sampling loop overhead", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[0][2]
    if "memory" in bench:
        rows = bench["memory"]["result"]["rows"]
        labels = [f"{r['model']} {r['phase']}\n{r['library']}" for r in rows]
        ax.barh(
            labels,
            [r["workload_rss_mb"] for r in rows],
            color=[LIBRARY_COLORS.get(r["library"], "grey") for r in rows],
        )
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("peak RSS added by the workload (MB)")
        ax.set_title("3. Peak memory", fontsize=10)
    for ax, name, title in (
        (axes[1][0], "quality", "4. Digits 8x8: quality at equal budget"),
        (axes[1][1], "quality_fashion", "5. Fashion-MNIST 28x28: quality at equal budget"),
    ):
        result = bench.get(name, {}).get("result", {})
        if "configs" in result:
            _quality_panel(ax, result, title)
    solvers = bench.get("solvers", {}).get("result", {})
    if solvers.get("models"):
        name = next(iter(solvers["models"]))
        _solvers_panel(axes[1][2], solvers, name, f"6. {name}: FD against network calls", True)
    for ax in axes.flat:
        if not ax.has_data():
            ax.axis("off")  # a benchmark that has not run yet
    fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=72, format="png"))
    finally:
        plt.close(fig)


def _quality_panel(ax: Any, q: dict[str, Any], title: str) -> None:
    """FD against training steps for every configuration, with the baselines as lines."""
    steps = q["budget"]["checkpoints"]
    for label, c in q["configs"].items():
        fd = [c["checkpoints"][str(s)]["fd"] for s in steps]
        mean = [f["mean"] for f in fd]
        err = [
            [m - f["min"] for m, f in zip(mean, fd, strict=True)],
            [f["max"] - m for m, f in zip(mean, fd, strict=True)],
        ]
        # one colour per library, one line style per setting (prediction, schedule)
        style = ":" if c.get("setting") == "eps, linear" else "-"
        ax.errorbar(
            steps,
            mean,
            yerr=err,
            marker="o",
            capsize=3,
            label=label,
            color=LIBRARY_COLORS.get(c["library"], "grey"),
            ls=style,
        )
    for name, style in {"train real": ":", "fitted gaussian": "--"}.items():
        if name in q["baselines"]:
            ax.axhline(
                q["baselines"][name]["fd"], color="grey", ls=style, lw=1, label=f"baseline: {name}"
            )
    ax.set_yscale("log")
    ax.set_xlabel("training steps")
    ax.set_ylabel("Frechet distance (classifier features)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


#: diffusers' scheduler labels of benchmark 6 -> the diffusionkit solver they match (one colour)
_SOLVER_PEERS = {
    "DDPM": "ddpm",
    "DDIM": "ddim",
    "DPM-Solver++ 2M": "dpm++2m",
    "DPM-Solver++ 3M": "dpm++3m",
    "DPM-Solver++ 2M SDE": "dpm++2m-sde",
    "UniPC": "unipc",
    "Euler": "euler",
    "Euler ancestral": "euler-ancestral",
    "Heun": "heun",
}


def _solvers_panel(ax: Any, r: dict[str, Any], name: str, title: str, legend: bool) -> None:
    """FD against network calls: one colour per solver, diffusionkit solid, diffusers dashed,
    the full chain a black line."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    m = r["models"][name]
    order = list(m["diffusionkit"])
    colors = plt.get_cmap("tab10")
    for library, style, marker in (("diffusionkit", "-", "o"), ("diffusers", "--", "x")):
        for solver, by_calls in m[library].items():
            key = _SOLVER_PEERS.get(solver, solver)
            j = order.index(key) if key in order else len(order)
            points = sorted((v["calls"], v["mean"]) for v in by_calls.values())
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                marker=marker,
                color=colors(j % 10),
                lw=1.3,
                ms=4,
                label=key if library == "diffusionkit" else None,
            )
    ax.axhline(m["full_chain"]["mean"], color="k", lw=1, label=f"full chain ({m['timesteps']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(r["calls"])
    ax.set_xticklabels([str(c) for c in r["calls"]])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("network calls")
    ax.set_ylabel("Frechet distance (classifier features)")
    ax.set_title(title, fontsize=10)
    if legend:
        ax.plot([], [], "k-", label="diffusionkit (solid)")
        ax.plot([], [], "k--", label="diffusers (dashed)")
        ax.legend(fontsize=7, ncol=2)


def solvers_chart(r: dict[str, Any], path: Path) -> None:
    """One panel per model of benchmark 6 (FD against network calls), for the docs page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 5.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        _solvers_panel(ax, r, name, f"{name}: {r['models'][name]['description']}", False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="k", ls="-"), plt.Line2D([], [], color="k", ls="--")]
    labels += ["diffusionkit (solid)", "diffusers (dashed)"]
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=72, format="png"))
    finally:
        plt.close(fig)


def likelihood_chart(r: dict[str, Any], path: Path) -> None:
    """Benchmark 8 for the likelihood page: the bound's terms against the timestep, and FD
    against network calls, fixed (solid) and learned (dashed) variances, one colour a budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for k, budget in enumerate(r["budgets"]):
        colour = f"C{k}"
        for name, row in budget["rows"].items():
            style = "-" if name.startswith("fixed") else "--"
            terms = row["terms_by_timestep"]
            steps = [t / len(terms) for t in range(1, len(terms) + 1)]
            label = f"{budget['name']}, {name}"
            left.plot(
                steps, terms, style, color=colour, label=f"{label}: {row['bpd']:.3f} bits/dim"
            )
            fds = [row["fd"][str(c)]["fd"] for c in r["calls"]]
            right.plot(r["calls"], fds, "o" + style, color=colour)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("t / T (t = 1 is the decoder)")
    left.set_ylabel("mean term of the bound (bits/dim)")
    left.set_title("Where the bits go: held-out digits", fontsize=10)
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xticks(r["calls"], [str(c) for c in r["calls"]])
    right.set_xlabel("network calls (DDPM ancestral sampler)")
    right.set_ylabel("Frechet distance (classifier features)")
    right.set_title("Sample quality against calls (solid: fixed, dashed: learned)", fontsize=10)
    fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=72, format="png"))
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- files
def replace_section(text: str, body: str) -> str:
    """``text`` with everything between the result markers replaced by ``body``."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"no {BEGIN} ... {END} markers in the document")
    return pattern.sub(lambda _: f"{BEGIN}\n{body.rstrip()}\n{END}", text)


def write_results(results: dict[str, Any], out_dir: Path, stem: str = "latest") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir``."""
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    write_atomic(paths["json"], json.dumps(results, indent=1) + "\n")
    write_atomic(paths["md"], markdown(results, heading="##"))
    chart(results, paths["png"])
    return paths
