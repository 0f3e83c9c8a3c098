"""The ``<image>`` token: taken out of turn texts on import, put back exactly on export.

Samples hold clean text (what scorers and judges read). Where the token stood is recorded in
``Sample.extra["image_token"]`` so the export writes the original strings again:

- ``{"turn": 0, "placement": "before", "separator": "\\n"}`` for ``"<image>\\nWhat is this?"``,
- ``{"turn": 0, "placement": "after", "separator": "\\n"}`` for ``"What is this?\\n<image>"``,
- ``{"turn": 0, "placement": "inline", "offset": 8, "separator": " "}`` for a token inside
  the text (``"Look at <image> here"``; the clean text is ``"Look at here"``),
- ``{"placement": "none"}`` when the source had an image but no token (nothing is put back
  here; the exporters add one per image, see `vlit.formats.llava.export_texts`),
- ``{"placement": "verbatim", "texts": {"0": "..."}, "clean": {"0": "..."}}`` when there are
  several tokens: the original strings are restored if the clean text was not changed.

Samples without that record (made by vlit) get ``"<image>\\n"`` before the first user turn,
once per image, the convention of LLaVA's instruction data.

Example:
    >>> texts, token = split_image_tokens(["What is this?\\n<image>", "A dog."])
    >>> texts, token["placement"]
    (['What is this?', 'A dog.'], 'after')
    >>> join_image_tokens(texts, token, image_count=1)
    ['What is this?\\n<image>', 'A dog.']
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_KEY = "image_token"
_SEPARATORS = ("\n", " ", "")


def split_image_tokens(texts: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """Clean texts and the placement record (``None`` if no turn has the token)."""
    holders = [index for index, text in enumerate(texts) if IMAGE_TOKEN in text]
    if not holders:
        return list(texts), None
    if len(holders) == 1 and texts[holders[0]].count(IMAGE_TOKEN) == 1:
        turn = holders[0]
        clean, placement = _split_one(texts[turn])
        cleaned = list(texts)
        cleaned[turn] = clean
        return cleaned, {"turn": turn, **placement}
    cleaned = list(texts)
    verbatim: dict[str, str] = {}
    clean_texts: dict[str, str] = {}
    for turn in holders:
        pieces = [piece.strip() for piece in texts[turn].split(IMAGE_TOKEN)]
        cleaned[turn] = "\n".join(piece for piece in pieces if piece)
        verbatim[str(turn)] = texts[turn]
        clean_texts[str(turn)] = cleaned[turn]
    return cleaned, {"placement": "verbatim", "texts": verbatim, "clean": clean_texts}


def _split_one(text: str) -> tuple[str, dict[str, Any]]:
    for separator in _SEPARATORS:
        if text.startswith(IMAGE_TOKEN + separator):
            return text[len(IMAGE_TOKEN + separator) :], {
                "placement": "before",
                "separator": separator,
            }
    for separator in _SEPARATORS:
        if text.endswith(separator + IMAGE_TOKEN):
            return text[: len(text) - len(separator + IMAGE_TOKEN)], {
                "placement": "after",
                "separator": separator,
            }
    offset = text.index(IMAGE_TOKEN)
    end = offset + len(IMAGE_TOKEN)
    # "Look at <image> here" -> "Look at here": one of the two spaces goes with the token
    separator = " " if text[end : end + 1] == " " and text[offset - 1 : offset] == " " else ""
    return text[:offset] + text[end + len(separator) :], {
        "placement": "inline",
        "offset": offset,
        "separator": separator,
    }


def join_image_tokens(
    texts: list[str],
    token: dict[str, Any] | None,
    *,
    image_count: int,
    first_user_turn: int = 0,
) -> list[str]:
    """Put the token(s) back; with no record, prefix the first user turn once per image."""
    result = list(texts)
    if not result:
        return result
    if token is None:
        if image_count > 0:
            turn = min(first_user_turn, len(result) - 1)
            result[turn] = (IMAGE_TOKEN + "\n") * image_count + result[turn]
        return result
    placement = token.get("placement")
    if placement == "none":
        return result
    if placement == "verbatim":
        originals: dict[str, str] = token.get("texts", {})
        clean: dict[str, str] = token.get("clean", {})
        for key, original in originals.items():
            turn = int(key)
            if turn < len(result):
                if result[turn] == clean.get(key):
                    result[turn] = original
                else:  # edited since import: the tokens go in front, LLaVA style
                    count = original.count(IMAGE_TOKEN)
                    result[turn] = (IMAGE_TOKEN + "\n") * count + result[turn]
        return result
    turn = min(int(token.get("turn", 0)), len(result) - 1)
    text = result[turn]
    separator = str(token.get("separator", "\n"))
    if placement == "after":
        result[turn] = text + separator + IMAGE_TOKEN
    elif placement == "inline" and int(token.get("offset", 0)) <= len(text):
        offset = int(token["offset"])
        result[turn] = text[:offset] + IMAGE_TOKEN + separator + text[offset:]
    else:
        result[turn] = IMAGE_TOKEN + separator + text
    return result
