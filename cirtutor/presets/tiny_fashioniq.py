"""Tiny mode in Fashion-IQ's format: the tiny preset's world and recipe, written to disk as Fashion-IQ's
files, so that the Fashion-IQ loader and its per-category evaluation run on a CPU too."""

BASE = "tiny"

OVERRIDES = {
    # The same synthetic world in Fashion-IQ's on-disk format (docs/data_formats.md, 'On-disk layout').
    "data.dataset": "fashioniq",
}
