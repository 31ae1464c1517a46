"""Run the benchmarks of diffusionkit against diffusers and denoising-diffusion-pytorch.

Usage (from the repository root, with the ``benchmarks`` extra installed)::

    python benchmarks/run.py                 # everything, results in benchmarks/results/latest.*
    python benchmarks/run.py --quick         # a smoke run of the harness; results in benchmarks/results/quick.*
    python benchmarks/run.py --only speed    # any of: speed, sampling_overhead, memory, quality,
                                             # quality_fashion, solvers, levers, conditional

Full runs also refresh the result sections of ``benchmarks/README.md`` and
``docs/performance.md``. Timings are meaningless on a busy machine: ``--wait-quiet`` waits until
the 1-minute load average drops below a threshold before starting, and every section records the
load at its start and end.
"""

from __future__ import annotations

import os

# Progress bars off in every library (tqdm reads this when it is first imported), so that no
# library pays for one in the timings. Before any import that may import tqdm.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import dataclasses
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import (  # noqa: E402
    conditional,
    levers,
    likelihood,
    memory,
    quality_budget,
    quality_fashion,
    report,
    sampling_overhead,
    solvers,
    speed,
)
from benchmarks.common import (  # noqa: E402
    Context,
    load_average,
    machine_info,
    python_command,
    set_threads,
)

BENCHMARKS = {
    m.NAME: m
    for m in (
        speed,
        sampling_overhead,
        memory,
        quality_budget,
        quality_fashion,
        solvers,
        levers,
        conditional,
        likelihood,
    )
}
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "benchmarks" / "README.md", ROOT / "docs" / "performance.md")
DOCS_CHART = ROOT / "docs" / "assets" / "performance.png"  # the docs site cannot reach results/
DOCS_SOLVERS_CHART = ROOT / "docs" / "assets" / "solvers.png"  # the "Choosing a sampler" page
DOCS_LIKELIHOOD_CHART = ROOT / "docs" / "assets" / "likelihood.png"  # the likelihood page


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def wait_for_quiet(threshold: float, max_wait: float, log) -> float:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` s)."""
    deadline = time.monotonic() + max_wait
    load = load_average()
    while load > threshold and time.monotonic() < deadline:
        log(f"load average {load} > {threshold}: waiting")
        time.sleep(30)
        load = load_average()
    return load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short variant: a smoke run of the harness, not for comparison",
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: one per core)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-docs", action="store_true", help="do not refresh README/docs tables")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rewrite the Markdown, the chart and the docs tables from the JSON",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="LOAD",
        default=None,
        help="wait until the load average is below LOAD before each benchmark",
    )
    parser.add_argument("--max-wait", type=float, default=3600.0, help="seconds to wait at most")
    parser.add_argument(
        "--quality-steps",
        type=int,
        nargs="+",
        metavar="N",
        help="quality: training steps at which to score (default 500 1000 2000, Fashion-MNIST "
        "1000 2000; --quick 150 and 20)",
    )
    parser.add_argument(
        "--quality-samples", type=int, metavar="N", help="quality: samples scored per checkpoint"
    )
    parser.add_argument(
        "--quality-seeds", type=int, nargs="+", metavar="S", help="quality: seeds (default 0 1 2)"
    )
    parser.add_argument(
        "--quality-settings",
        nargs="+",
        choices=[quality_budget.EPS_LINEAR, quality_budget.V_SIGMOID],
        metavar="SETTING",
        help="quality: only the configurations of these settings ('eps, linear', 'v, sigmoid'; "
        "default both)",
    )
    parser.add_argument(
        "--solvers-model",
        type=Path,
        metavar="DIR",
        help="solvers: the main job's run folder (default: runs/digits if it exists, else "
        "trained by the benchmark)",
    )
    args = parser.parse_args(argv)
    stem = "quick" if args.quick else "latest"
    results_path = args.out / f"{stem}.json"
    if args.report_only and args.only:
        parser.error("--report-only runs nothing: drop --only")
    if args.report_only and not results_path.is_file():
        parser.error(f"--report-only: no results to redraw at {results_path}")

    threads = set_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for child processes (memory benchmark)
    device = torch.device(args.device)
    changes = {
        key: value
        for key, value in (
            ("checkpoints", args.quality_steps and tuple(args.quality_steps)),
            ("n_samples", args.quality_samples),
            ("seeds", args.quality_seeds and tuple(args.quality_seeds)),
        )
        if value is not None
    }
    for base in (quality_budget.FULL, quality_budget.FASHION):
        try:  # a bad value fails here, in one line, not after the other sections have run
            dataclasses.replace(base, **changes)
        except ValueError as err:
            parser.error(f"--quality-*: {err}")
    ctx = Context(
        quick=args.quick,
        device=device,
        threads=threads,
        out_dir=args.out,
        quality_changes=changes,
        quality_settings=tuple(args.quality_settings or ()),
        solvers_model=args.solvers_model,
    )
    machine = machine_info(device)
    ctx.log(
        f"machine: {machine['cpu']}, {machine['cpu_count']} cores, {threads} torch threads, {device}"
    )
    ctx.log(f"versions: {machine['versions']}")

    results = report.load_results(results_path)
    paths = report.write_results(results, args.out, stem) if args.report_only else {}
    for name in [] if args.report_only else args.only or list(BENCHMARKS):
        if args.wait_quiet is not None:
            wait_for_quiet(args.wait_quiet, args.max_wait, ctx.log)
        meta = {
            "command": python_command(),
            "quick": args.quick,
            "machine": machine_info(device),
            "started": _now(),
            "load_start": load_average(),
        }
        ctx.log(f"== {name} (load average {meta['load_start']})")
        start = time.perf_counter()
        result = BENCHMARKS[name].run(ctx)
        meta.update(finished=_now(), load_end=load_average(), seconds=time.perf_counter() - start)
        ctx.log(f"== {name} done in {meta['seconds']:.0f} s (load average {meta['load_end']})")
        results["benchmarks"][name] = {"meta": meta, "result": result}
        paths = report.write_results(results, args.out, stem)  # after each: a crash keeps the rest
    ctx.log(f"results: {', '.join(str(p) for p in paths.values())}")
    # only a full run into the committed results folder speaks for the project
    if not args.quick and not args.no_docs and args.out.resolve() == RESULTS.resolve():
        table = report.markdown(results, heading="###")
        for doc in DOCS:
            if doc.exists():
                report.write_atomic(doc, report.replace_section(doc.read_text(), table))
                ctx.log(f"updated {doc.relative_to(ROOT)}")
        report.write_atomic(DOCS_CHART, paths["png"].read_bytes())
        if "solvers" in results["benchmarks"]:
            report.solvers_chart(results["benchmarks"]["solvers"]["result"], DOCS_SOLVERS_CHART)
            ctx.log(f"updated {DOCS_SOLVERS_CHART.relative_to(ROOT)}")
        if "likelihood" in results["benchmarks"]:
            report.likelihood_chart(
                results["benchmarks"]["likelihood"]["result"], DOCS_LIKELIHOOD_CHART
            )
            ctx.log(f"updated {DOCS_LIKELIHOOD_CHART.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
