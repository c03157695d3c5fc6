"""Fashion-IQ's two captions per triplet -> one modification text (docs/data_formats.md, 'Fashion-IQ modification texts').

Every Fashion-IQ triplet has two partial descriptions of the change. Evaluation joins
them deterministically; training draws one of four compositions each time a sample is
seen. The authors draw with the unseeded global `random`; we draw from a generator seeded
by (seed, epoch, index), so a run is reproducible and independent of worker count and
sample order, while each epoch still sees a fresh composition.
"""
from __future__ import annotations

import random

STRIP_CHARS = ".?, "


def strip_caption(caption: str) -> str:
    """Remove leading/trailing '.', '?', ',' and spaces (Python `str.strip('.?, ')`)."""
    return caption.strip(STRIP_CHARS)


def join_captions(c1: str, c2: str) -> str:
    """Evaluation text: `cap(s(c1)) + " and " + s(c2)`."""
    return f"{strip_caption(c1).capitalize()} and {strip_caption(c2)}"


def compose_captions(c1: str, c2: str, r: float) -> str:
    """Training text for a uniform draw r in [0, 1): the authors' four-way rule, boundaries included.

    r < 0.25 -> both, in order; 0.25 < r < 0.5 -> both, flipped; 0.5 < r < 0.75 -> first only;
    otherwise (r = 0.25, r = 0.5 or r >= 0.75) -> second only.
    """
    a, b = strip_caption(c1), strip_caption(c2)
    if r < 0.25:
        return f"{a.capitalize()} and {b}"
    if 0.25 < r < 0.5:
        return f"{b.capitalize()} and {a}"
    if 0.5 < r < 0.75:
        return a.capitalize()
    return b.capitalize()


def all_compositions(c1: str, c2: str) -> list[str]:
    """Every text `compose_captions` can give for one triplet (up to four, distinct, in the rule's order)."""
    return list(dict.fromkeys(compose_captions(c1, c2, r) for r in (0.0, 0.3, 0.6, 0.8)))


def sample_caption(c1: str, c2: str, seed: int, epoch: int, index: int) -> str:
    """Training text for triplet `index` in `epoch`: a reproducible draw of `compose_captions`."""
    r = random.Random(f"fiq-caption/{seed}/{epoch}/{index}").random()
    return compose_captions(c1, c2, r)
