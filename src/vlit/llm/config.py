"""Which LLM backend to use, as a small typed config, and the one registry that builds it.

Example:
    >>> config = LlmConfig(kind="openai", base_url="http://127.0.0.1:8000/v1", model="qwen")
    >>> backend = build_backend(config)
    >>> backend.describe()["kind"]
    'openai'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from vlit.errors import ConfigError
from vlit.llm.base import LlmBackend
from vlit.llm.local import LocalTransformersBackend
from vlit.llm.openai_compatible import (
    DEFAULT_MAX_RESPONSE_BYTES,
    OpenAICompatibleBackend,
    TokenLimitParam,
    Transport,
)
from vlit.llm.vllm_backend import VllmBackend

BackendKind = Literal["openai", "local", "vllm"]


LLM_CONCURRENCY = 4
"""Requests an LLM session keeps in flight unless told otherwise (generation, judge, report)."""


@dataclass(frozen=True, kw_only=True)
class LlmConfig:
    """Settings of one LLM backend (the recipe's ``llm:`` block maps onto this).

    ``model`` is the served model name (openai), a local folder, GGUF file or hub id (local,
    vllm); for ``local`` it may be left out to use the embedded SmolLM2-135M-Instruct.
    ``gguf_file`` names the GGUF file inside the ``model`` folder, when the weights are GGUF.
    ``headers`` are sent with every request of an ``openai`` backend (a value ``$NAME`` is read
    from that environment variable); ``token_limit_param`` names the field carrying
    ``max_tokens``; an answer above ``max_response_bytes`` fails its request; ``transport``
    picks who speaks HTTP under httpx (``auto``, ``httpx``, ``aiohttp``).
    ``concurrency`` is how many requests a session keeps in flight. Prices are in the
    currency of your choice per 1000 tokens; when given, sessions report a cost and can stop
    at ``max_cost``.
    """

    kind: BackendKind = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    headers: dict[str, str] = field(default_factory=dict)
    token_limit_param: TokenLimitParam = "max_tokens"
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    gguf_file: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    supports_n: bool = True
    concurrency: int = LLM_CONCURRENCY
    transport: Transport = "auto"
    price_per_1k_prompt: float | None = None
    price_per_1k_completion: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKENDS:
            raise ConfigError(
                f"unknown LLM backend kind {self.kind!r}",
                fix=f"use one of: {', '.join(sorted(BACKENDS))}",
            )
        if self.concurrency < 1:
            raise ConfigError(
                f"llm.concurrency must be at least 1, not {self.concurrency}",
                fix=f"set it to the number of requests to keep in flight, e.g. {LLM_CONCURRENCY}",
            )
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError(
                "llm.max_retries must be >= 0 and llm.timeout_s > 0",
                fix="e.g. max_retries: 6, timeout_s: 120",
            )


class _BuildsFromConfig(Protocol):
    @classmethod
    def from_config(cls, config: LlmConfig) -> LlmBackend: ...


# Heavy dependencies (torch, transformers, vllm) are imported only when a backend loads.
BACKENDS: dict[str, type[_BuildsFromConfig]] = {
    "openai": OpenAICompatibleBackend,
    "local": LocalTransformersBackend,
    "vllm": VllmBackend,
}


def build_backend(config: LlmConfig) -> LlmBackend:
    """Build the backend ``config.kind`` names."""
    return BACKENDS[config.kind].from_config(config)
