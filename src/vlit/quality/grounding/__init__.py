"""Grounding: what a conversation claims about its image, checked against the annotations.

- ``claims``: which COCO objects an answer claims present or absent, one rule per decision;
- ``vocabulary``: the words for the 80 categories and the rules' word lists (data:
  ``vlit/data/grounding/vocabulary.yaml``);
- ``ocr``: strings claimed to be written in the image;
- ``stage``: the ``AnnotationGrounding`` scoring stage and its per-sample report.
"""

from vlit.quality.grounding.claims import Mention, asked_objects, find_mentions
from vlit.quality.grounding.ocr import ocr_claim_matches, ocr_claims
from vlit.quality.grounding.stage import (
    SPACY_MODEL,
    AnnotationGrounding,
    GroundingReport,
    check_sample,
    load_spacy,
)

__all__ = [
    "SPACY_MODEL",
    "AnnotationGrounding",
    "GroundingReport",
    "Mention",
    "asked_objects",
    "check_sample",
    "find_mentions",
    "load_spacy",
    "ocr_claim_matches",
    "ocr_claims",
]
