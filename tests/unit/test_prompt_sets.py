"""Packaged prompt sets built from human-labelled data: sizes, order and what each record carries."""

from __future__ import annotations

import pytest

from synthpref.stages.prompts import PACKAGED, normalise


@pytest.fixture(scope="module")
def human_pairs():
    return PACKAGED["pyrit-human-pairs"]()


def test_pyrit_human_pairs_extends_the_harm_pairs(human_pairs):
    harm = PACKAGED["pyrit-harm-pairs"]()
    assert [r["text"] for r in human_pairs[: len(harm)]] == [r["text"] for r in harm]  # the 74 come first
    assert len(human_pairs) == 304
    keys = [normalise(r["text"]) for r in human_pairs]
    assert len(set(keys)) == len(keys)  # one record per objective


def test_pyrit_human_pairs_both_sides_come_first(human_pairs):
    both = [("human_rejected" in r) for r in human_pairs]
    assert sum(both) == 152 and all(both[:152]) and not any(both[152:])
    # every record has a non-empty human-labelled safe answer; a pair's two sides differ
    assert all(r["human_chosen"].strip() for r in human_pairs)
    assert all(r["human_chosen"] != r["human_rejected"] for r in human_pairs[:152])
    # the demo's first 64 are pairs Original can use
    assert all("human_rejected" in r for r in human_pairs[:64])
