"""Shared test configuration: every test runs against a local Hugging Face Hub-compatible server.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_TOKEN`` once, when it is first
imported, and neither ``push_to_hub`` nor ``from_pretrained`` takes an endpoint argument. So the
server starts and the environment is set here, at import time of this file, which pytest loads
before it imports any test module (and so before diffusionkit or huggingface_hub).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hub_server import HubServer, start_hub_server

if "huggingface_hub" in sys.modules:
    # Too late: the client has already fixed its endpoint, and tests would reach the real Hub.
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py could point it at the test Hub "
        "server; import it lazily in plugins and root conftest files."
    )

HUB = start_hub_server()
_HF_HOME = tempfile.mkdtemp(prefix="diffusionkit-tests-hf-home-")

# Variables that would override HF_HOME's cache layout, force offline mode or point at staging.
for _name in (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
):
    os.environ.pop(_name, None)
os.environ.update(
    HF_ENDPOINT=HUB.url,
    HF_HOME=_HF_HOME,
    HF_TOKEN=HUB.tokens["alice"],
    HF_HUB_DISABLE_TELEMETRY="1",
    # Never try Xet storage: the test server only offers plain HTTP uploads and downloads.
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)


def _shutdown() -> None:
    HUB.stop()
    shutil.rmtree(_HF_HOME, ignore_errors=True)


atexit.register(_shutdown)


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The running test Hub (``HF_ENDPOINT`` points at it; ``HF_TOKEN`` is alice's token)."""
    return HUB


@pytest.fixture(scope="session")
def hub_tokens() -> dict[str, str]:
    """Tokens of the test Hub's users (user -> token): ``alice`` (the default) and ``bob``."""
    return HUB.tokens


@pytest.fixture
def fresh_hf_cache(tmp_path: Path) -> Path:
    """An empty cache folder, for ``cache_dir=`` when a cached copy must not answer for the Hub."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return cache
