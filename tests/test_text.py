"""Fashion-IQ caption handling (docs/data_formats.md, 'Fashion-IQ modification texts')."""
import pytest

from cirtutor.data.text import all_compositions, compose_captions, join_captions, sample_caption, strip_caption


def test_join_matches_the_documented_example():
    assert join_captions("is shiny and silver with shorter sleeves", "fit and flare") == \
        "Is shiny and silver with shorter sleeves and fit and flare"


def test_strip_removes_only_the_four_characters():
    assert strip_caption(" ?is red., ") == "is red"
    assert strip_caption("..,") == ""
    assert strip_caption("!wow!") == "!wow!"
    assert join_captions(" yello and more flowing", "short and black.") == "Yello and more flowing and short and black"


@pytest.mark.parametrize("r,expected", [
    (0.0, "Is red and LONGER"), (0.2499, "Is red and LONGER"),  # only the first is capitalised
    (0.25, "Longer"),                       # boundary falls through to "second only"
    (0.3, "Longer and is red"), (0.5, "Longer"),
    (0.6, "Is red"), (0.75, "Longer"), (0.99, "Longer"),
])
def test_compose_follows_the_four_way_rule(r, expected):
    assert compose_captions("is red.", "LONGER", r) == expected


def test_sample_caption_is_seeded_and_redrawn_per_epoch():
    draws = lambda seed, epoch: [sample_caption("a", "b", seed, epoch, i) for i in range(64)]
    assert draws(0, 0) == draws(0, 0)
    assert draws(0, 0) != draws(0, 1)
    assert draws(0, 0) != draws(1, 0)
    assert set(draws(0, 0)) == {"A and b", "B and a", "A", "B"}


def test_all_compositions_are_every_text_training_can_draw():
    texts = all_compositions("is red.", "has a star")
    assert texts == ["Is red and has a star", "Has a star and is red", "Is red", "Has a star"]
    assert {sample_caption("is red.", "has a star", 0, e, 3) for e in range(40)} == set(texts)
    assert all_compositions("x", "x") == ["X and x", "X"]      # equal captions: two distinct texts
