"""Shared fixtures. Real data lives in ../shared/data beside the repository (see its README)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    """An S3 server (moto's, a real HTTP server) on 127.0.0.1, as an s3fs file system.

    The endpoint and credentials are set in the environment, so every s3fs client of vlit (and
    every Ray worker started from this process) reaches it. One server per session: s3fs keeps
    its clients per set of options, so a second server on another port would not be reached.
    """
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {key: os.environ.get(key) for key in [*S3_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_CREDENTIALS, AWS_ENDPOINT_URL=f"http://{host}:{port}")
    try:
        yield fsspec.filesystem("s3")
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
