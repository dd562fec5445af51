"""Errors shared by both packages that need no heavy imports."""

from __future__ import annotations

__all__ = ["ParameterError", "ParameterTypeError", "StoreError"]


class ParameterError(ValueError):
    """A bad value of one named argument.

    ``str(exc)`` is the library's message, ``"`param` reason"`` unless ``message``
    says otherwise; the command lines report ``reason`` against the option that sets
    ``param`` (:func:`npa_precompute.cli_options.user_error`), so a CLI user reads
    ``--loss`` where a Python user reads `` `loss` ``.

    Parameters
    ----------
    param : str
        The Python name of the argument (``"loss"``, ``"out"``, ``"k"``).
    reason : str
        What is wrong with it, without its name: ``"must be >= 1, got 0"``.
    message : str, optional, keyword-only
        The full message, when it does not read ``"`param` reason"``.
    """

    def __init__(self, param: str, reason: str, *, message: str | None = None) -> None:
        super().__init__(message if message is not None else f"`{param}` {reason}")
        self.param = param
        self.reason = reason


class ParameterTypeError(ParameterError, TypeError):
    """A value of the wrong type for one named argument (``1.5`` or ``True`` for a count).

    Both a :class:`ParameterError` (so it names the argument, and the command lines
    report it against the option) and a :class:`TypeError`, as scikit-image raises for
    types. Parameters as :class:`ParameterError`.
    """


class StoreError(RuntimeError):
    """The store is missing, of another schema, or lacks what was asked for.

    Defined here, below :mod:`npa_precompute.store` and :mod:`npa_precompute.derived`, so
    that both raise it without importing each other (re-exported by the store).
    """
