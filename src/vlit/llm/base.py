"""The one interface every LLM backend implements, and the request/answer types.

Callers (generation, the correctness judge, taggers, complexity scorers) never talk to a backend
directly: they build ``ChatRequest``s and hand them to ``vlit.llm.session.LlmSession``, which adds
the journal (resume, no request paid twice), concurrency, retries, token/cost accounting and the
request budget.

Example:
    >>> request = ChatRequest(messages=[Message("user", "Say hi")], temperature=0.8, n=5)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from vlit.errors import ConfigError

StructuredSetting = Literal["auto", "json_schema", "json_object", "off"]
STRUCTURED_SETTINGS: tuple[str, ...] = ("auto", "json_schema", "json_object", "off")
"""How hard a request insists on its output schema.

``auto``: constrain to the schema where the backend can (the local model, an endpoint that
accepts ``response_format``), and fall back to asking in the prompt where it cannot;
``json_schema``: constrain to the schema (an error where that is impossible); ``json_object``:
constrain to any JSON object; ``off``: the prompt alone asks for the shape.
"""


def structured_setting(value: str) -> StructuredSetting:
    """``value`` as a structured-output setting, or a ConfigError naming the settings.

    >>> structured_setting("off")
    'off'
    """
    if value not in STRUCTURED_SETTINGS:
        raise ConfigError(
            f"unknown structured-output setting {value!r}",
            fix=f"use one of: {', '.join(STRUCTURED_SETTINGS)}",
        )
    return value  # type: ignore[return-value]


#: The separators of the JSON a constrained model writes: items, then key and value.
JSON_SEPARATORS = (", ", ": ")


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class OutputSchema:
    """The JSON shape an answer must have (a JSON schema) and the structured-output setting.

    The schema is held as canonical JSON text so that requests stay hashable and comparable.

    >>> OutputSchema.of("score", {"type": "integer"}, "auto").schema
    {'type': 'integer'}
    """

    name: str
    schema_json: str
    setting: StructuredSetting = "auto"

    @classmethod
    def of(cls, name: str, schema: dict[str, Any], setting: StructuredSetting) -> OutputSchema:
        # Keys keep their order: constrained decoders write properties in schema order.
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        return cls(name=name, schema_json=text, setting=setting)

    @property
    def schema(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.schema_json)
        return value

    @property
    def constrained(self) -> bool:
        """Whether backends should constrain the output (every setting but ``off``)."""
        return self.setting != "off"


@dataclass(frozen=True)
class ChatRequest:
    """Everything that determines an answer, except the model (the backend knows it).

    ``n`` asks for n independent generations (rollouts 0..n-1); ``seed`` is the base seed;
    ``top_logprobs`` asks for the log-probabilities of the most likely first-token candidates
    (used to turn a 1-10 score into an expected value), where the backend supports it;
    ``output`` is the JSON shape the answer must have, constrained where the backend can.
    """

    messages: tuple[Message, ...]
    temperature: float = 0.8
    max_tokens: int = 1024
    n: int = 1
    seed: int = 0
    top_logprobs: int | None = None
    stop: tuple[str, ...] = ()
    output: OutputSchema | None = None

    def __init__(
        self,
        messages: list[Message] | tuple[Message, ...],
        *,
        temperature: float = 0.8,
        max_tokens: int = 1024,
        n: int = 1,
        seed: int = 0,
        top_logprobs: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
        output: OutputSchema | None = None,
    ) -> None:
        object.__setattr__(self, "messages", tuple(messages))
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "max_tokens", max_tokens)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "top_logprobs", top_logprobs)
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "output", output)

    def parameters(self) -> dict[str, Any]:
        """The sampling parameters, for provenance and the journal key."""
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "top_logprobs": self.top_logprobs,
            "stop": list(self.stop),
            "structured": self.output.setting if self.output is not None else None,
        }


@dataclass
class Choice:
    """One generation. ``first_token_logprobs`` maps candidate tokens to log-probabilities."""

    text: str
    finish_reason: str = "stop"
    first_token_logprobs: dict[str, float] | None = None


@dataclass
class Completion:
    """The answer to one request: one choice per rollout, with token usage.

    ``retries`` and ``rate_limited`` count the retried attempts (and how many of them were
    HTTP 429 answers) it took to get this answer, for the session's accounting.
    """

    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    retries: int = 0
    rate_limited: int = 0


@dataclass
class Outcome:
    """What a session returns per request: the choices, or why there are none.

    ``from_journal`` is true when the answer came from the journal (no request was sent);
    ``budget_refused`` when the session's budget did not let the request through.
    """

    request: ChatRequest
    choices: list[Choice] = field(default_factory=list)
    error: str | None = None
    from_journal: bool = False
    budget_refused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def rollout_seed(seed: int, rollout: int) -> int:
    """The seed of rollout ``rollout`` of a request whose base seed is ``seed``.

    Rollout 0 keeps the base seed, so ``rollout_seed(rollout_seed(s, i), 0) == rollout_seed(s, i)``:
    asking again for rollout i alone (``n=1`` with this seed) reproduces it on backends that
    sample each rollout from its own seed (the local and vLLM backends do).

    >>> rollout_seed(7, 0)
    7
    """
    if rollout == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{rollout}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@runtime_checkable
class LlmBackend(Protocol):
    """A chat model. ``complete`` must return exactly ``request.n`` choices or raise.

    Choice ``j`` of a request is its rollout ``j``; backends that can seed each generation
    seed it with ``rollout_seed(request.seed, j)``. Failures raise ``vlit.errors.LlmError``.
    """

    @property
    def model_name(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """Backend, model and settings for provenance; never contains secrets."""
        ...

    async def complete(self, request: ChatRequest) -> Completion: ...

    async def aclose(self) -> None: ...
