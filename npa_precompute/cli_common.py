"""What the ``npa-precompute`` and ``npa-train`` command lines share: warnings as one
line, and library errors turned into click errors that name the option.

Imports only click, so ``--help`` stays fast.
"""

from __future__ import annotations

import click

from npa_precompute.errors import ParameterError

__all__ = ["echo_warning", "user_error"]


def echo_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command lines: one ``Warning: ...`` line on stderr."""
    click.echo(f"Warning: {message}", err=True)


def _option(ctx: click.Context, name: str) -> click.Parameter | None:
    for p in ctx.command.params:
        if p.name == name:
            return p
    for p in ctx.command.params:  # an option spelled like the argument: --k for `k`
        if any(o.lstrip("-").replace("-", "_") == name for o in (*p.opts, *p.secondary_opts)):
            return p
    return None


def user_error(
    exc: Exception, *, prefix: str = "", aliases: dict[str, str] | None = None
) -> click.ClickException:
    """The click error to raise for an error a user caused (bad input, bad option value).

    A :class:`~npa_precompute.errors.ParameterError` becomes a
    :class:`click.BadParameter` on the option that sets its argument ("Invalid value for
    '--loss': ..."); the option is the command's parameter of that name, or the one
    spelled like it (``--k`` for ``k``), or ``aliases[param]`` (a parameter name).
    Anything else, or an argument no option sets, keeps its message in a
    :class:`click.ClickException`.

    Parameters
    ----------
    exc : the library's exception
    prefix : put before the message (e.g. ``"rank 1: "``), keyword-only
    aliases : ``{library argument: click parameter name}``, keyword-only
    """
    ctx = click.get_current_context(silent=True)
    if isinstance(exc, ParameterError) and ctx is not None:
        param = _option(ctx, (aliases or {}).get(exc.param, exc.param))
        if param is not None:
            return click.BadParameter(prefix + exc.reason, ctx=ctx, param=param)
    return click.ClickException(prefix + str(exc))
