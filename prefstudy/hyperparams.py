"""One hyper-parameter of an objective (`Param`): its default, the values it allows, and the check
that a given value is one of them. Plain Python, so a configuration is checked without torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import KW_ONLY, dataclass


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of an objective: its default and what values are allowed.

    The type of `default` is the type a value must have (an int is accepted for a float). Bounds:
    `low`/`high` are inclusive (value >= low, value <= high), `above`/`below` exclusive (value >
    above, value < below). Numbers must be finite.
    """

    default: float | str | bool
    _: KW_ONLY
    help: str
    choices: tuple | None = None
    low: float | None = None
    above: float | None = None
    high: float | None = None
    below: float | None = None

    def describe(self) -> str:
        """What values are allowed, in words: "a finite number > 0", "one of 'sum', 'mean'"."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if isinstance(self.default, bool):
            return "True or False"
        if isinstance(self.default, str):
            return "a string"
        lower = (f">= {self.low:g}" if self.low is not None
                 else f"> {self.above:g}" if self.above is not None else None)
        upper = (f"<= {self.high:g}" if self.high is not None
                 else f"< {self.below:g}" if self.below is not None else None)
        bounds = [b for b in (lower, upper) if b]
        return "a finite number " + " and ".join(bounds) if bounds else "a finite number"

    def coerce(self, value):
        """`value` in the type of the default (float for numbers), or None if it is not allowed."""
        if isinstance(self.default, bool):
            return value if isinstance(value, bool) else None
        if isinstance(self.default, str):
            ok = isinstance(value, str) and (self.choices is None or value in self.choices)
            return value if ok else None
        # A number; bool is an int subclass but `beta = true` is surely a mistake.
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return None
        value = float(value)
        in_bounds = (
            math.isfinite(value)
            and (self.low is None or value >= self.low)
            and (self.above is None or value > self.above)
            and (self.high is None or value <= self.high)
            and (self.below is None or value < self.below)
            and (self.choices is None or value in self.choices)
        )
        return value if in_bounds else None
