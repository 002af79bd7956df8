"""The `--lens` grammar: which prompt lengths a sweep measures.

    1k-64k        doubling from 1k to 64k, inclusive      -> 1024, 2048, ..., 65536
    1k,3k,57k     an explicit list (kept in the given order, duplicates dropped)
    8k-64k:+8k    arithmetic step                           -> 8192, 16384, ..., 65536
    1k-64k:x4     geometric factor                          -> 1024, 4096, 16384, 65536

A number is an integer with an optional k/K (x1024) or m/M (x1024**2) suffix. Ranges include their
start, and their end whenever a step lands on it (the end is never exceeded). Parts may be mixed:
`256,1k-4k`. Anything else is an EdgeportsError naming the bad part.
"""

from __future__ import annotations

import re

from edgeports.errors import EdgeportsError

_SUFFIX = {"": 1, "k": 1024, "m": 1024 * 1024}
_NUM = re.compile(r"^(\d+)([km]?)$", re.IGNORECASE)
MAX_LENS = 4096  # a sweep with more cells than this is a typo, not a plan


def parse_len(text: str) -> int:
    """'4k' -> 4096; '300' -> 300. Positive integers only."""
    m = _NUM.match(text.strip())
    if not m:
        raise EdgeportsError(f"bad length {text!r} in --lens (use e.g. 512, 4k, 1m)")
    value = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise EdgeportsError(f"bad length {text!r} in --lens: lengths must be positive")
    return value


def _range(part: str) -> list[int]:
    span, _, step = part.partition(":")
    lo_text, _, hi_text = span.partition("-")
    lo, hi = parse_len(lo_text), parse_len(hi_text)
    if hi < lo:
        raise EdgeportsError(f"bad --lens range {part!r}: the end is smaller than the start")
    step = step.strip().lower()
    if not step:
        step = "x2"
    if step.startswith("x"):
        try:
            factor = int(step[1:])
        except ValueError:
            raise EdgeportsError(f"bad --lens step {step!r} in {part!r} (use x2, x4, ... or +8k)") from None
        if factor < 2:
            raise EdgeportsError(f"bad --lens factor in {part!r}: it must be at least 2")
        out, n = [], lo
        while n <= hi:
            out.append(n)
            n *= factor
    elif step.startswith("+"):
        inc = parse_len(step[1:])
        out = list(range(lo, hi + 1, inc))
    else:
        raise EdgeportsError(f"bad --lens step {step!r} in {part!r} (use x2, x4, ... or +8k)")
    if len(out) > MAX_LENS:
        raise EdgeportsError(f"--lens {part!r} expands to {len(out)} lengths (at most {MAX_LENS})")
    return out


def parse_lens(spec: str) -> tuple[int, ...]:
    """Expand a --lens spec into prompt lengths, in order, without duplicates."""
    if spec is None or not spec.strip():
        raise EdgeportsError("empty --lens (use e.g. 1k-64k, 1k,3k,57k, 8k-64k:+8k or 1k-64k:x4)")
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise EdgeportsError(f"bad --lens {spec!r}: empty item between commas")
        values = _range(part) if "-" in part else [parse_len(part)]
        out.extend(v for v in values if v not in out)
    if len(out) > MAX_LENS:
        raise EdgeportsError(f"--lens {spec!r} expands to {len(out)} lengths (at most {MAX_LENS})")
    return tuple(out)


def format_len(n: int) -> str:
    """4096 -> '4k', 1536 -> '1536' (the inverse of parse_len where exact)."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}m"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)
