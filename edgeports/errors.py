"""The one exception type that means "the user asked for something wrong or impossible".

The CLI turns it into a single line on stderr and exit status 2, never a traceback. Anything else
that escapes is a bug in edgeports and keeps its traceback.
"""


class EdgeportsError(Exception):
    """A user-facing error: bad input, missing artifact, unavailable backend. One actionable line."""


def missing_dependency(package: str, purpose: str, how: str | None = None) -> EdgeportsError:
    """The error for a lazily imported optional dependency that is not installed."""
    hint = how or f"pip install {package}"
    return EdgeportsError(f"{purpose} needs the '{package}' package, which is not importable here ({hint})")
