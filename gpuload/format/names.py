"""Close-name hints for "not found" messages, in bounded time.

``difflib.get_close_matches`` compares the name with every candidate (a quadratic
sequence match each): over a million checkpoint keys that is tens of seconds for one
typo. Here difflib only ever sees a bounded candidate set: for large name sets, the names
in the same scope (everything before the last ``/``) and the names with the same last
component, of similar length — a typo in the leaf or in the scope is found, both at once
is not.
"""

from __future__ import annotations

import difflib
import itertools

__all__ = ["close_matches", "CANDIDATE_LIMIT"]

#: At most this many names are handed to difflib for one hint.
CANDIDATE_LIMIT = 2000


def close_matches(word: str, names, n: int = 3) -> list[str]:
    """Up to ``n`` names of ``names`` close to ``word`` (difflib's ranking, bounded work)."""
    word = str(word)
    if not isinstance(names, (list, tuple)):
        names = list(names)
    if len(names) <= CANDIDATE_LIMIT:
        return difflib.get_close_matches(word, names, n=n)
    scope, _, leaf = word.rpartition("/")
    scope = scope + "/" if scope else ""
    tail = "/" + leaf
    slack = max(3, len(word) // 3)
    lo, hi = len(word) - slack, len(word) + slack
    pick = (
        x for x in names if lo <= len(x) <= hi and ((scope and x.startswith(scope)) or x.endswith(tail) or x == leaf)
    )
    return difflib.get_close_matches(word, list(itertools.islice(pick, CANDIDATE_LIMIT)), n=n)
