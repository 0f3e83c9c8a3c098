"""Seeds that are stable across runs, processes and machines.

Python's ``hash()`` of a string is salted per process, so it must never feed a seed. Every random
choice of generation derives its generator from the recipe seed and the names of what is being
decided (image id, mode, object), hashed with SHA-256.

Example:
    >>> seeded_random(0, "391895", "conversation").random() == seeded_random(
    ...     0, "391895", "conversation").random()
    True
"""

from __future__ import annotations

import hashlib
import random

_SEPARATOR = "\x1f"  # unit separator: cannot appear in an id, so ("a", "bc") != ("ab", "c")


def stable_seed(*parts: object) -> int:
    """A 63-bit integer derived from ``parts`` (their ``str()``), the same in every process."""
    text = _SEPARATOR.join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seeded_random(*parts: object) -> random.Random:
    """A ``random.Random`` seeded with :func:`stable_seed` of ``parts``."""
    return random.Random(stable_seed(*parts))
