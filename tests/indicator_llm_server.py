"""A scripted OpenAI-compatible server on 127.0.0.1 for the TagGPT and complexity tests.

It answers like a small, consistent tagging model: the tags depend on what the conversation
asks (with different surface forms per rollout, so normalisation and merging have work to do),
plus one rare tag per rollout that the frequency filter must drop. Complexity prompts get a
first-token distribution over "3", "4" and "7" (so the expected score is checkable by hand),
or a plain number when log-probabilities are not asked for. The backend under test talks to it
over real HTTP.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAG_FORMS = {
    "how many": ["Counting", "counting", "object counting!"],
    "colour": ["colour recognition", "Colour-Recognition", "attribute"],
    "describe": ["Description", "image description", "describing"],
}
COMPLEXITY_PROBABILITIES = {"3": 0.5, "4": 0.3, "7": 0.2}


def _tag_answer(conversation: str, rollout: int) -> str:
    lowered = conversation.lower()
    tags = [forms[rollout % len(forms)] for key, forms in TAG_FORMS.items() if key in lowered]
    tags.append(f"oddity {zlib.crc32(lowered.encode()) % 1000}-{rollout}")
    return ", ".join(tags)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        """Quiet."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = body["messages"][-1]["content"]
        n = int(body.get("n", 1))
        choices = []
        for rollout in range(n):
            if "Score:" in last:
                choice = {
                    "index": rollout,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "3"},
                }
                if body.get("logprobs"):
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": "3",
                                "logprob": math.log(0.5),
                                "top_logprobs": [
                                    {"token": t, "logprob": math.log(p)}
                                    for t, p in COMPLEXITY_PROBABILITIES.items()
                                ],
                            }
                        ]
                    }
            else:
                seed = int(body.get("seed", 0)) + rollout
                choice = {
                    "index": rollout,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": _tag_answer(last, seed)},
                }
            choices.append(choice)
        payload = json.dumps(
            {
                "choices": choices,
                "model": body["model"],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
