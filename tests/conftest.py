"""Shared fixtures. Real data lives in ../shared/data beside the repository (see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No model hub is reachable here or in CI: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Real OpenAI-compatible test servers (scripted_server, smollm_server): see tests/llm_servers.py.
pytest_plugins = ["llm_servers"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: shared/ must sit beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def coco_tiny(shared_data: Path) -> Path:
    return shared_data / "coco_tiny"


@pytest.fixture(scope="session")
def llava_slice(shared_data: Path) -> Path:
    return shared_data / "formats" / "llava" / "llava_pretrain_slice_2k.json"
