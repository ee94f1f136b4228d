"""Exception groups, looked through: the one helper trivmc uses to find what went wrong
inside (nested) `BaseExceptionGroup`s."""

from __future__ import annotations


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order, or [exc] itself when
    it is not a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaf_exceptions(sub)]
    return [exc]


def single_leaf(exc: BaseException) -> BaseException | None:
    """The one exception inside `exc` (nested groups looked through) when there is
    exactly one, else None."""
    leaves = leaf_exceptions(exc)
    return leaves[0] if len(leaves) == 1 else None
