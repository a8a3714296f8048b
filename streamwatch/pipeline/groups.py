"""Which sensors form a group (a machine), by MQTT-style patterns over sensor ids.

A pattern is a topic filter over sensor ids: ``+`` matches exactly one level, ``#`` (last
level only) the rest, one level or more. A sensor id that matches joins a group whose id is
the sensor id up to and including the level matched by the pattern's *last* ``+``; the member
name is what follows. So with ``skab/+/#``::

    skab/valve1_3/Pressure  ->  group "skab/valve1_3", member "Pressure"

and with ``sparkplug/+/+/+/#`` a Sparkplug device is a group and each metric (which may have
levels of its own) a member. A pattern without ``+`` makes its fixed prefix the group:
``plant/pump1/#`` puts every ``plant/pump1/...`` sensor in group ``plant/pump1``.

Patterns are tried in order, the first match wins; a sensor no pattern matches is in no group
(and is scored alone). Pure functions, no state but a bounded cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PatternError(ValueError):
    """A group pattern that cannot name a group and a member."""


def pattern_levels(text: str, what: str = "pattern") -> tuple[str, ...]:
    """The levels of an MQTT-style sensor-id pattern (``+`` one whole level, ``#`` the rest,
    last); :class:`PatternError`, naming ``what``, if it is not a valid one."""
    levels = tuple(text.split("/"))
    if not text or any(not lv for lv in levels):
        raise PatternError(f"{what} {text!r}: empty level")
    for i, lv in enumerate(levels):
        if ("+" in lv and lv != "+") or ("#" in lv and lv != "#"):
            raise PatternError(f"{what} {text!r}: '+' and '#' must be whole levels")
        if lv == "#" and i != len(levels) - 1:
            raise PatternError(f"{what} {text!r}: '#' must be the last level")
    return levels


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern."""

    text: str
    levels: tuple[str, ...]
    group_levels: int
    """How many leading levels of a matching id make the group id."""

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Compile a pattern; :class:`PatternError` says what is wrong with a bad one."""
        levels = pattern_levels(text, "group pattern")
        plus = [i for i, lv in enumerate(levels) if lv == "+"]
        if plus:
            group_levels = plus[-1] + 1
        elif levels[-1] == "#":
            group_levels = len(levels) - 1
        else:
            raise PatternError(f"group pattern {text!r}: needs a '+' or a final '#'")
        if group_levels == 0:
            raise PatternError(f"group pattern {text!r}: no level names the group")
        if group_levels >= len(levels):
            raise PatternError(
                f"group pattern {text!r}: nothing after the group's last level names a member "
                "(end it with '/#' or a member level)"
            )
        return cls(text, levels, group_levels)

    def match(self, sensor: str) -> tuple[str, str] | None:
        """``(group, member)`` if ``sensor`` matches, else None."""
        parts = sensor.split("/")
        pat = self.levels
        hash_at = len(pat) - 1 if pat[-1] == "#" else -1
        if hash_at >= 0:
            if len(parts) <= hash_at:  # '#' takes at least one level
                return None
        elif len(parts) != len(pat):
            return None
        fixed = hash_at if hash_at >= 0 else len(pat)
        for lv, part in zip(pat[:fixed], parts[:fixed], strict=True):
            if not part or (lv != "+" and lv != part):
                return None
        if any(not p for p in parts[fixed:]):
            return None
        g = self.group_levels
        return "/".join(parts[:g]), "/".join(parts[g:])


class Grouper:
    """Assigns sensor ids to groups by a list of patterns (first match wins), with a bounded
    memo so the hot path splits each id once."""

    def __init__(self, patterns: Sequence[str], cache_size: int = 100_000) -> None:
        self.patterns = [Pattern.parse(p) for p in patterns]
        self._cache: dict[str, tuple[str, str] | None] = {}
        self._cache_size = cache_size

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, sensor: str) -> tuple[str, str] | None:
        """``(group, member)`` of the first pattern ``sensor`` matches, or None."""
        try:
            return self._cache[sensor]
        except KeyError:
            pass
        found = None
        for p in self.patterns:
            found = p.match(sensor)
            if found is not None:
                break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[sensor] = found
        return found

    def split(self, sensors: Sequence[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
        """Sort ids into ``{group: {member: sensor id}}`` and the ids in no group."""
        groups: dict[str, dict[str, str]] = {}
        alone: list[str] = []
        for s in sensors:
            m = self.match(s)
            if m is None:
                alone.append(s)
            else:
                groups.setdefault(m[0], {})[m[1]] = s
        return groups, alone
