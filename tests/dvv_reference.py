"""The two conditions a replica's check of a checked write combines, written out one
at a time: the reference `DVVSet.supersedes` is tested against, and what the tests
of causal states and quorums state their properties in."""

from __future__ import annotations

from ringfs.dvv import DVVSet


def covers_values(a: DVVSet, b: DVVSet) -> bool:
    """Whether merging `b` into `a` adds no sibling: every value of `b` has a dot
    `a`'s clock covers (so it is superseded in `a`, or held there too)."""
    mine = {i: n for i, n, _ in a.entries}
    return all(not vals or mine.get(i, 0) >= n for i, n, vals in b.entries)


def reuses_dots_of(a: DVVSet, b: DVVSet) -> bool:
    """Whether some dot holds a value in `a` and another value in `b`: one dot issued
    twice, for two writes (the merge would keep one and drop the other)."""
    theirs = {i: (n, vals) for i, n, vals in b.entries if vals}
    for i, n, vals in a.entries:
        t = theirs.get(i)
        if t is None or not vals:
            continue
        m, tvals = t
        for k, v in enumerate(vals):
            j = m - (n - k)  # the dot (i, n - k) in their values, newest first
            if 0 <= j < len(tvals) and tvals[j] != v:
                return True
    return False
