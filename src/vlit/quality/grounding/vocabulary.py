"""The words for the 80 COCO categories and the word lists of the grounding rules.

All of it is data: ``src/vlit/data/grounding/vocabulary.yaml``. ``COCO_SYNONYMS`` maps each
category to words that name the **whole** category (a mention of "dogs" refers to all dogs in
the image); ``COCO_SUBTYPES`` to words that name only **part** of it ("man" is a person, but
"two men" says nothing about the women present). Both kinds count as mentions of the category
for hallucination checks; counts and absence claims are checked against whole-category words.
``PHRASES`` are multi-word expressions decided as a whole ("toilet paper" names no object,
"toilet bowl" is the toilet).

Example:
    >>> lookup_phrase("motorbike")
    ('motorcycle', 'synonym')
    >>> lookup_phrase("women")
    ('person', 'subtype')
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Literal

import yaml

MentionKind = Literal["synonym", "subtype"]


def _load() -> dict[str, Any]:
    text = resources.files("vlit").joinpath("data/grounding/vocabulary.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


VOCABULARY = _load()
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    name: tuple(entry["synonyms"]) for name, entry in VOCABULARY["categories"].items()
}
COCO_SUBTYPES: dict[str, tuple[str, ...]] = {
    name: tuple(entry["subtypes"])
    for name, entry in VOCABULARY["categories"].items()
    if entry.get("subtypes")
}
COCO_CATEGORIES: tuple[str, ...] = tuple(COCO_SYNONYMS)
PHRASES: dict[str, tuple[str, ...]] = {
    phrase: tuple(categories) for phrase, categories in VOCABULARY["phrases"].items()
}


def word_set(name: str) -> frozenset[str]:
    """One of the vocabulary's word lists (``kin_nouns``, ``colour_words``, ...)."""
    return frozenset(VOCABULARY[name])


# Irregular plurals the lemmatizer of a small model may miss.
_IRREGULAR_PLURALS = {
    "people": "people",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "knives": "knife",
    "oxen": "ox",
    "skis": "skis",
    "scissors": "scissors",
    "geese": "goose",
    "teeth": "tooth",
    "buses": "bus",
    "calves": "calf",
    "shelves": "shelf",
    "ties": "tie",
    "passersby": "passerby",
}


def _build_lookup() -> dict[str, tuple[str, MentionKind]]:
    lookup: dict[str, tuple[str, MentionKind]] = {}
    for category, words in COCO_SUBTYPES.items():
        for word in words:
            lookup[word] = (category, "subtype")
    for category, words in COCO_SYNONYMS.items():
        for word in words:
            lookup[word] = (category, "synonym")
    return lookup


_LOOKUP = _build_lookup()
MAX_PHRASE_WORDS = max(len(phrase.split()) for phrase in [*_LOOKUP, *PHRASES])
# The first word of every entry: a quick "can a phrase start here?" before any lookup.
FIRST_WORDS = frozenset(phrase.split()[0] for phrase in [*_LOOKUP, *PHRASES])


def singular(word: str) -> str:
    """A plain English singular for a lower-case noun (used when the lemmatizer kept a plural)."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _LOOKUP:
        return word
    if word.endswith("men") and word[:-3] + "man" in _LOOKUP:
        return word[:-3] + "man"  # "policemen", "firemen"
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def may_start_phrase(lower: str, lemma: str) -> bool:
    """Whether a word (its lower-case form or lemma) begins some vocabulary entry."""
    return (
        lower in FIRST_WORDS
        or lemma in FIRST_WORDS
        or singular(lower) in FIRST_WORDS
        or singular(lemma) in FIRST_WORDS
    )


def _normal(phrase: str) -> tuple[str, str]:
    words = phrase.lower().split()
    return " ".join(words), " ".join([*words[:-1], singular(words[-1])]) if words else ""


def lookup_phrase(phrase: str) -> tuple[str, MentionKind] | None:
    """The COCO category a (lemmatised, lower-case) word or phrase names, and how."""
    for form in _normal(phrase):
        found = _LOOKUP.get(form)
        if found is not None:
            return found
    return None


def lookup_fixed_phrase(phrase: str) -> tuple[str, ...] | None:
    """The categories of a phrase decided as a whole (``()`` for one that names no object)."""
    for form in _normal(phrase):
        if form in PHRASES:
            return PHRASES[form]
    return None
