"""OCR claims: strings a text says are written in the image, checked against OCR annotations.

Example:
    >>> ocr_claims('The red sign says "STOP".')
    ['STOP']
    >>> ocr_claim_matches("STOPP", ["stop"])
    True
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

_TEXT_CUES = re.compile(
    r"\b(says?|saying|reads?|reading|written|writing|printed|text|word|words|letters|sign|"
    r"label|logo|banner|inscription|spells?|caption)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“”]([^\"“”]{2,80})[\"“”]|(?<![A-Za-z])'([^']{2,60})'(?![A-Za-z])")
_SAYS = re.compile(
    r"\b(?:says|reads|spells(?: out)?|with the words?|written|printed)\s+(?:on it\s+)?"
    r"([A-Z0-9][A-Za-z0-9&'\-!]*(?:\s+[A-Z0-9][A-Za-z0-9&'\-!]*){0,5})"
)


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def ocr_claims(text: str) -> list[str]:
    """Strings the text says are written in the image (quoted, or after "says"/"reads")."""
    claims: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if not _TEXT_CUES.search(sentence):
            continue
        for match in _QUOTED.finditer(sentence):
            claims.append(match.group(1) or match.group(2))
        if not _QUOTED.search(sentence):
            claims.extend(match.group(1) for match in _SAYS.finditer(sentence))
    return [claim.strip() for claim in claims if _normalise_text(claim)]


def ocr_claim_matches(claim: str, ocr_texts: list[str]) -> bool:
    """Whether a claimed string agrees with the annotated OCR (containment or close spelling)."""
    wanted = _normalise_text(claim)
    annotated = [_normalise_text(t) for t in ocr_texts if _normalise_text(t)]
    if not annotated:
        return False
    joined = " ".join(annotated)
    for candidate in [*annotated, joined]:
        if wanted in candidate or candidate in wanted:
            return True
        if SequenceMatcher(None, wanted, candidate).ratio() >= 0.8:
            return True
    return False
