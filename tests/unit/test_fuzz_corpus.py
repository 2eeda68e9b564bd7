"""Replay the fuzz corpus (tests/fuzz/corpus/TARGET/*) through every fuzz target.

The coverage-guided runs are ``scripts/fuzz`` (CI runs it for a bounded time); this
keeps every input the fuzzer ever found interesting, and the seeds, passing in the
ordinary suite: no exception escapes a parser beyond its documented ones, and no
parser holds back more than its bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402


def test_every_target_has_a_corpus() -> None:
    for name in targets.TARGETS:
        assert list((FUZZ / "corpus" / name).iterdir()), f"no corpus for {name}"


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_corpus_replays_cleanly(name: str) -> None:
    target = targets.TARGETS[name]
    inputs = sorted((FUZZ / "corpus" / name).iterdir())
    for path in inputs:
        data = path.read_bytes()
        target(data)
        for cut in (len(data) // 2, len(data) - 1):  # truncations too
            if cut > 0:
                target(data[:cut])
