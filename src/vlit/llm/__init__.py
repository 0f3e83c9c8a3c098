"""LLM backends behind one interface, the journal, and the session that runs requests.

Build requests with ``ChatRequest``/``Message``, pick a backend with ``build_backend(LlmConfig)``
(or construct one), and run them with ``LlmSession`` over an ``LlmJournal``. torch,
transformers and vllm are imported only when a local model loads.
"""

from __future__ import annotations

from vlit.llm.base import (
    ChatRequest,
    Choice,
    Completion,
    LlmBackend,
    Message,
    Outcome,
    rollout_seed,
)
from vlit.llm.config import BACKENDS, LlmConfig, build_backend
from vlit.llm.journal import LlmJournal, request_key
from vlit.llm.local import LocalTransformersBackend
from vlit.llm.openai_compatible import OpenAICompatibleBackend, RequestFailed
from vlit.llm.session import LlmSession, SessionUsage, TokenPrices
from vlit.llm.vllm_backend import VllmBackend

__all__ = [
    "BACKENDS",
    "ChatRequest",
    "Choice",
    "Completion",
    "LlmBackend",
    "LlmConfig",
    "LlmJournal",
    "LlmSession",
    "LocalTransformersBackend",
    "Message",
    "OpenAICompatibleBackend",
    "Outcome",
    "RequestFailed",
    "SessionUsage",
    "TokenPrices",
    "VllmBackend",
    "build_backend",
    "request_key",
    "rollout_seed",
]
