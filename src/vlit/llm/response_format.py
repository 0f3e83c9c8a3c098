"""``response_format`` for OpenAI-compatible endpoints, and the fallback when one refuses it.

OpenAI, vLLM, SGLang, llama.cpp server and Ollama accept ``response_format`` with a JSON schema
(``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``) or plain JSON mode
(``{"type": "json_object"}``). A server that does not know the parameter answers HTTP 400 naming
it. With the setting ``auto`` the backend then stops sending it (once, for the rest of its
life) and the run records that it fell back; with ``json_schema`` or ``json_object`` the 400 is
an error, since the user asked for that.

Example:
    >>> output = OutputSchema.of("score", {"type": "integer"}, "json_object")
    >>> ResponseFormatNegotiation().fields(output)
    {'response_format': {'type': 'json_object'}}
"""

from __future__ import annotations

import re
from typing import Any

from vlit.llm.base import OutputSchema

# A 400 whose message names the parameter: "response_format is not supported", "Unknown
# parameter: 'response_format'", "json_schema ... not supported", "guided_json ...".
_NAMES_THE_PARAMETER = re.compile(r"response_format|json_schema|json_object|guided_", re.I)
_HTTP_400 = re.compile(r"\bHTTP 400\b")


def response_format(output: OutputSchema) -> dict[str, Any] | None:
    """The ``response_format`` value for ``output``'s setting (None for ``off``)."""
    if output.setting == "off":
        return None
    if output.setting == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {"name": output.name, "schema": output.schema, "strict": True},
    }


def refuses_response_format(error: str) -> bool:
    """Whether a failed request's error is the server refusing ``response_format`` itself:
    an HTTP 400 whose message names it.

    >>> refuses_response_format("... (HTTP 400): {'error': 'unknown field response_format'}")
    True
    """
    return bool(_HTTP_400.search(error)) and bool(_NAMES_THE_PARAMETER.search(error))


class ResponseFormatNegotiation:
    """What one endpoint accepts: ``response_format`` until it refuses it under ``auto``.

    ``refusal`` holds the server's words once it refused; ``summary()`` says what was used.
    """

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.settings_seen: set[str] = set()

    def fields(self, output: OutputSchema | None) -> dict[str, Any]:
        """The request-body fields for ``output`` (empty when nothing is to be sent)."""
        if output is None:
            return {}
        self.settings_seen.add(output.setting)
        if output.setting == "auto" and self.refusal is not None:
            return {}
        value = response_format(output)
        return {} if value is None else {"response_format": value}

    def falls_back(self, output: OutputSchema | None, error: str) -> bool:
        """After a failed request: record a refusal of ``response_format`` and return True
        when the request should be sent again without it (setting ``auto`` only)."""
        if output is None or output.setting != "auto" or not refuses_response_format(error):
            return False
        if self.refusal is None:
            self.refusal = error.strip()[:300]
        return True

    def summary(self) -> dict[str, Any]:
        """For the run summary: the settings asked for and whether the server refused."""
        return {
            "settings": sorted(self.settings_seen),
            "response_format": "refused, fell back to the prompt alone"
            if self.refusal is not None
            else "sent",
            "refusal": self.refusal,
        }


def structured_summary(backend: object | None, setting: str) -> dict[str, Any]:
    """The run summary's record of structured output: the setting, and for an endpoint
    whether it accepted ``response_format`` or the run fell back."""
    negotiation = getattr(backend, "response_format", None)
    if isinstance(negotiation, ResponseFormatNegotiation):
        return {"setting": setting, **negotiation.summary()}
    return {"setting": setting}
