"""Write ``docs/api/<module>.md``: one mkdocstrings page per public module of diffusionkit.

Run it after adding a public module (``python docs/scripts/make_api_pages.py``), then add the
printed nav entries to ``mkdocs.yml``. A module listed in ``PAGES`` that does not exist yet is
skipped with a note, so the pages always match the code. The pages are committed: building
the site does not run this script.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

API = Path(__file__).resolve().parents[1] / "api"

# page name -> (module, one-line summary, submodules rendered on the same page)
PAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "schedules": ("diffusionkit.schedules", "noise schedules and their float64 tables", ()),
    "diffusion": ("diffusionkit.diffusion", "`DenoiseDiffusion`: loss, noising, sampling", ()),
    "prediction": ("diffusionkit.prediction", "what the network predicts: eps, x0 or v", ()),
    "samplers": (
        "diffusionkit.samplers",
        "solvers of the reverse process, each owning its loop; samplers by name",
        (
            "diffusionkit.samplers.base",
            "diffusionkit.samplers.ddpm",
            "diffusionkit.samplers.dpm_solver",
            "diffusionkit.samplers.unipc",
            "diffusionkit.samplers.karras",
        ),
    ),
    "chain": (
        "diffusionkit.chain",
        "a reverse chain as a sampler sees it: calls, noise, reports",
        (),
    ),
    "view": ("diffusionkit.view", "the model as a denoiser: eps_hat and x0_hat at (x_t, t)", ()),
    "thresholding": (
        "diffusionkit.thresholding",
        "x0 processing: clipping and dynamic thresholding",
        (),
    ),
    "objective": ("diffusionkit.objective", "the training objective and its targets", ()),
    "forward_process": ("diffusionkit.forward_process", "q(x_t | x_0) in closed form", ()),
    "configurable": (
        "diffusionkit.configurable",
        "config capture, repr and equality of components",
        (),
    ),
    "inputs": ("diffusionkit.inputs", "checks of images, timesteps and noise passed in", ()),
    "persistence": (
        "diffusionkit.persistence",
        "save_pretrained / from_pretrained / push_to_hub as methods",
        (),
    ),
    "spacing": ("diffusionkit.spacing", "which timesteps a shorter sampling run visits", ()),
    "sampling_plan": (
        "diffusionkit.sampling_plan",
        "the timesteps a reverse chain visits (steps, start and end)",
        (),
    ),
    "editing": ("diffusionkit.editing", "inpainting and image-to-image", ()),
    "conditioning": ("diffusionkit.conditioning", "class labels and conditioning images", ()),
    "guidance": ("diffusionkit.guidance", "classifier-free guidance", ()),
    "weighting": ("diffusionkit.weighting", "per-timestep weights of the training loss", ()),
    "networks": (
        "diffusionkit.networks",
        "the DDPM U-Net and its layers",
        ("diffusionkit.networks.unet", "diffusionkit.networks.layers"),
    ),
    "denoiser": ("diffusionkit.denoiser", "the contract every network meets", ()),
    "registry": ("diffusionkit.registry", "name -> class tables for configs and the CLI", ()),
    "limits": (
        "diffusionkit.limits",
        "bounds on configured sizes, checked before allocation",
        (),
    ),
    "data": ("diffusionkit.data", "datasets, image folders and the [-1, 1] scaling", ()),
    "hub": (
        "diffusionkit.hub",
        "saving, loading and sharing models; the diffusers format",
        (
            "diffusionkit.hub.io",
            "diffusionkit.hub.errors",
            "diffusionkit.hub.checkpoint",
            "diffusionkit.hub.components",
            "diffusionkit.hub.weights",
            "diffusionkit.hub.remote",
            "diffusionkit.hub.integrity",
            "diffusionkit.hub.card",
            "diffusionkit.hub.diffusers_unet",
            "diffusionkit.hub.diffusers_scheduler",
            "diffusionkit.hub.diffusers_pipeline",
        ),
    ),
    "training": (
        "diffusionkit.training",
        "the `Trainer`, EMA, checkpoints, precision, distributed runs",
        (
            "diffusionkit.training.trainer",
            "diffusionkit.training.ema",
            "diffusionkit.training.checkpoint",
            "diffusionkit.training.resume",
            "diffusionkit.training.lock",
            "diffusionkit.training.run_folder",
            "diffusionkit.training.memory",
            "diffusionkit.training.precision",
            "diffusionkit.training.lr",
            "diffusionkit.training.data_order",
            "diffusionkit.training.metrics",
            "diffusionkit.training.distributed",
            "diffusionkit.training.errors",
        ),
    ),
    "utils": (
        "diffusionkit.utils",
        "image grids, GIFs, atomic file writes, reading only regular files",
        (),
    ),
    "cli": ("diffusionkit.cli", "the `diffusionkit` command line", ()),
}


def exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def page(module: str, submodules: tuple[str, ...]) -> str:
    subs = [m for m in submodules if exists(m)]
    lines = [f"# {module}", "", f"::: {module}", "    options:", "      show_root_heading: false"]
    if subs:
        # the package's own docstring only: its members are documented in their modules below
        lines.append("      members: false")
        for sub in subs:
            lines += ["", f"::: {sub}", "    options:", "      heading_level: 2"]
    return "\n".join(lines) + "\n"


def main() -> None:
    written = []
    for name, (module, summary, submodules) in PAGES.items():
        if not exists(module):
            print(f"skipped {module}: not in this checkout")
            (API / f"{name}.md").unlink(missing_ok=True)
            continue
        (API / f"{name}.md").write_text(page(module, submodules), encoding="utf-8")
        written.append((name, module, summary))
    rows = ["| [`diffusionkit`](diffusionkit.md) | the package: everything most users import |"]
    rows += [f"| [`{m}`]({n}.md) | {s} |" for n, m, s in written]
    index = (API / "index.md").read_text(encoding="utf-8")
    head, _, _ = index.partition("| module | what it holds |")
    tail = index.partition("\n\nConventions used")[2]
    table = "\n".join(["| module | what it holds |", "|---|---|", *rows])
    (API / "index.md").write_text(f"{head}{table}\n\nConventions used{tail}", encoding="utf-8")
    print("nav entries for mkdocs.yml:")
    for name, module, _ in written:
        print(f"      - {module}: api/{name}.md")


if __name__ == "__main__":
    main()
