"""vLLM in process, for users with a GPU (optional extra ``vlit[vllm]``).

Each rollout is its own prompt with ``n=1`` and ``seed=rollout_seed(request.seed, rollout)``,
so rollout i is the same whether it was asked for in a batch of n or alone on resume; vLLM's
prefix cache makes the repeated prompt cheap. ``vllm`` is imported only when the model loads.

A request with an output schema is constrained by vLLM's own structured output: newer vLLM
takes ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``, vLLM 0.6.3 to
0.10 ``SamplingParams(guided_decoding=GuidedDecodingParams(json=schema))``; whichever the
installed vLLM has is used (``json_object=True`` for the setting ``json_object``). A vLLM with
neither asks by the prompt alone under ``auto`` and raises for ``json_schema``/``json_object``.

Not exercised by the test suite beyond choosing the constraint's fields (no GPU and no vllm in
CI); it follows vLLM's documented ``LLM.chat(messages, sampling_params)`` /
``SamplingParams(n, temperature, seed, max_tokens, stop, logprobs)`` API.

Example:
    >>> backend = VllmBackend(model="Qwen/Qwen2.5-7B-Instruct")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.llm.base import ChatRequest, Choice, Completion, OutputSchema, rollout_seed

if TYPE_CHECKING:
    from vlit.llm.config import LlmConfig


class VllmBackend:
    """An in-process vLLM engine answering chat requests.

    Args:
        model: a hub id or local folder vLLM can load.
        dtype: vLLM's ``dtype`` (``"auto"`` keeps the checkpoint's).
        gpu_memory_utilization: share of GPU memory vLLM may take.
        max_model_len: context length to allocate; ``None`` uses the model's.
    """

    kind = "vllm"

    def __init__(
        self,
        *,
        model: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ) -> None:
        self.model = model
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self._engine: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: LlmConfig) -> VllmBackend:
        if not config.model:
            raise ConfigError(
                "a 'vllm' LLM backend needs a model",
                fix="set llm.model to a hub id or a local model folder",
            )
        return cls(model=config.model)

    @property
    def model_name(self) -> str:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
        }

    async def aclose(self) -> None:
        """Nothing to close: the engine stays loaded for the next session."""

    def load(self) -> None:
        with self._lock:
            if self._engine is None:
                self._load_locked()

    def _load_locked(self) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ModelUnavailableError(
                "the vllm backend needs the vllm package, which is not installed",
                fix="pip install 'vlit[vllm]' on a machine with a CUDA GPU, or use kind 'openai' "
                "against a running `vllm serve` endpoint",
            ) from None
        self._engine = LLM(
            model=self.model,
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
        )

    async def complete(self, request: ChatRequest) -> Completion:
        return await asyncio.to_thread(self._complete_blocking, request)

    def _complete_blocking(self, request: ChatRequest) -> Completion:
        from vllm import SamplingParams

        with self._lock:
            if self._engine is None:
                self._load_locked()
            conversation = [{"role": m.role, "content": m.content} for m in request.messages]
            structured = structured_sampling_fields(request.output)
            params = [
                SamplingParams(
                    n=1,
                    temperature=request.temperature,
                    max_tokens=request.max_tokens,
                    seed=rollout_seed(request.seed, rollout),
                    stop=list(request.stop) or None,
                    logprobs=request.top_logprobs,
                    **structured,
                )
                for rollout in range(request.n)
            ]
            outputs = self._engine.chat(
                [conversation] * request.n, sampling_params=params, use_tqdm=False
            )
        choices = []
        completion_tokens = 0
        for output in outputs:
            generated = output.outputs[0]
            completion_tokens += len(generated.token_ids)
            choices.append(
                Choice(
                    text=generated.text,
                    finish_reason=generated.finish_reason or "stop",
                    first_token_logprobs=_first_token_logprobs(generated.logprobs),
                )
            )
        return Completion(
            choices=choices,
            prompt_tokens=len(outputs[0].prompt_token_ids or []) if outputs else 0,
            completion_tokens=completion_tokens,
            model=self.model,
        )


def constraint_fields(output: OutputSchema | None) -> dict[str, Any]:
    """The fields of vLLM's constraint object for ``output`` (empty: no constraint).

    >>> constraint_fields(OutputSchema.of("score", {"type": "integer"}, "json_schema"))
    {'json': {'type': 'integer'}}
    """
    if output is None or not output.constrained:
        return {}
    if output.setting == "json_object":
        return {"json_object": True}
    return {"json": output.schema}


def structured_sampling_fields(output: OutputSchema | None) -> dict[str, Any]:
    """The ``SamplingParams`` keyword that constrains a request to ``output``, in the API of
    the installed vLLM: ``structured_outputs`` (newer) or ``guided_decoding`` (0.6.3-0.10)."""
    fields = constraint_fields(output)
    if not fields:
        return {}
    from vllm import sampling_params

    if hasattr(sampling_params, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_params.StructuredOutputsParams(**fields)}
    if hasattr(sampling_params, "GuidedDecodingParams"):
        return {"guided_decoding": sampling_params.GuidedDecodingParams(**fields)}
    assert output is not None
    if output.setting == "auto":
        return {}  # the prompt alone asks for the shape
    raise ModelUnavailableError(
        f"structured output {output.setting!r} needs a vLLM with structured outputs (0.6.3+)",
        fix="upgrade vllm, or use --structured auto or off",
    )


def _first_token_logprobs(logprobs: Any) -> dict[str, float] | None:
    """vLLM gives, per generated position, a dict token id -> Logprob(logprob, decoded_token)."""
    if not logprobs:
        return None
    result: dict[str, float] = {}
    for token_id, candidate in logprobs[0].items():
        token = candidate.decoded_token if candidate.decoded_token is not None else str(token_id)
        result[token] = max(float(candidate.logprob), result.get(token, float("-inf")))
    return result
