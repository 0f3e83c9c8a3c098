"""Text helpers shared by the indicators: what counts as an instruction, a response, a word."""

from __future__ import annotations

import re

from vlit.schema import Sample

_IMAGE_TOKEN = re.compile(r"<\s*image\s*>", re.IGNORECASE)
_WORD = re.compile(r"[a-z][a-z0-9'-]*[a-z0-9]|[a-z]")


def clean(text: str) -> str:
    """Text without ``<image>`` placeholders and with whitespace collapsed."""
    return " ".join(_IMAGE_TOKEN.sub(" ", text).split())


def instructions(sample: Sample) -> list[str]:
    """The user turns of a sample (each one instruction), cleaned; empty ones left out."""
    return [text for text in (clean(t) for t in sample.user_turns()) if text]


def responses(sample: Sample) -> list[str]:
    """The assistant turns of a sample, cleaned; empty ones left out."""
    return [text for text in (clean(t) for t in sample.assistant_turns()) if text]


def conversation_text(sample: Sample) -> str:
    return " ".join(clean(turn.text) for turn in sample.turns)


# English function words (our list; close to the usual stop lists) and words that only point
# at the image, which every instruction shares.
STOP_WORDS = frozenset(
    """a about above after again against all almost also although am among an and another any
    anyone anything are around as at be became because been before being below beside besides
    between both but by can cannot could did do does doing done down during each either else
    enough etc even ever every few for from further get gets give given go had has have having
    he her here hers herself him himself his how however i if in into is it its itself just
    least less let like made make many may me might mine more most much must my myself near
    neither no nor not now of off often on once one only onto or other others otherwise our
    ours ourselves out over own per perhaps please quite rather really same see seem seems
    several shall she should show shown since so some someone something still such than that
    the their theirs them themselves then there therefore these they this those though through
    thus to together too toward towards under until up upon us use used using very via was we
    well were what whatever when whenever where wherever whether which while who whoever whole
    whom whose why will with within without would yet you your yours yourself yourselves
    tell describe image picture photo photograph pic img visible""".split()
)


def stop_words() -> frozenset[str]:
    """Words left out of instruction word sets (see ``STOP_WORDS``)."""
    return STOP_WORDS


def content_words(text: str) -> list[str]:
    """Lowercased word tokens without stop words, possessive endings or one-letter words."""
    stops = stop_words()
    words = []
    for token in _WORD.findall(text.lower()):
        token = token.removesuffix("'s").strip("'-")
        if len(token) > 1 and token not in stops:
            words.append(token)
    return words


def word_count(text: str) -> int:
    return len(_WORD.findall(text.lower()))


def dialogue(sample: Sample, *, max_chars: int) -> str:
    """The conversation as ``USER: ...`` / ``ASSISTANT: ...`` lines, cut at ``max_chars``."""
    lines = []
    for turn in sample.turns:
        text = clean(turn.text)
        if text:
            lines.append(f"{'USER' if turn.role == 'user' else 'ASSISTANT'}: {text}")
    return "\n".join(lines)[:max_chars]
