"""What every fuzz rule draws: its swarm group switch and a tuple of small choices.

A rule takes one argument, `c`, a `Choices`: a fixed number of bytes drawn
by Hypothesis as one choice, which the rule spends on its
decisions (which live name, which optional argument).  Drawing once per rule
instead of once per decision keeps Hypothesis' per-draw overhead out of the
hot path, and shrinking every byte to 0 means "the first option, no
optional argument", the simplest command.  Decisions past the end of the
tuple read 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import precondition

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def group(name: str) -> Callable[[F], F]:
    """Precondition: the rule runs only in examples whose swarm enabled group `name`."""
    return precondition(lambda self: name in self.enabled)


class Choices:
    """A rule's decisions, spent left to right (see the module docstring)."""

    __slots__ = ("values", "used")

    def __init__(self, values: Sequence[int]) -> None:
        self.values = tuple(values)
        self.used = 0

    def __repr__(self) -> str:
        return f"Choices{self.values!r}"

    def next(self) -> int:
        i = self.used
        self.used += 1
        return self.values[i] if i < len(self.values) else 0

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return self.next() % n if n > 0 else 0

    def between(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        return low + self.below(high - low + 1)

    def boolean(self) -> bool:
        return self.below(2) == 1

    def rarely(self, n: int) -> bool:
        """True once in `n`; shrinks to False."""
        return self.below(n) == n - 1

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]


def choices(size: int = 24) -> st.SearchStrategy[Choices]:
    """The strategy of a rule's `c` argument."""
    return st.binary(min_size=size, max_size=size).map(Choices)
