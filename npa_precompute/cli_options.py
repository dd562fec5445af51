"""What the ``npa-precompute`` and ``npa-train`` command lines share: the common options
(``--store``, ``--out``, ``--tiles``, ``--device``, ``--quiet``), warnings as one line,
and library errors turned into click errors that name the option.

Imports only click, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import click

from npa_precompute.errors import ParameterError

__all__ = [
    "device_option",
    "echo_warning",
    "out_option",
    "quiet_option",
    "reports_user_errors",
    "store_argument",
    "store_option",
    "tiles_option",
    "user_error",
]

#: ``--store``: the weight store a training or scoring command reads.
store_option = click.option(
    "--store", required=True, type=click.Path(), help="Weight store (npa-precompute)."
)
#: ``STORE``: the store an ``npa-precompute`` reading command opens (must exist).
store_argument = click.argument("store", type=click.Path(exists=True, file_okay=False))
#: ``--device``: where torch runs (None: cuda if available).
device_option = click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Default: cuda if available, else cpu.",
)
#: ``--quiet`` / ``-q``: no progress bar.
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def out_option(help: str, *, file: bool = False) -> Callable:
    """``--out`` (required): an output folder, or a file with ``file=True``."""
    return click.option("--out", required=True, type=click.Path(dir_okay=not file), help=help)


def tiles_option(*names: str, help: str, multiple: bool = False) -> Callable:
    """``--tiles`` (or ``names``): tile ids, comma-separated (and repeatable with
    ``multiple=True``), default None; parsed by :func:`npa_precompute.params.parse_tiles`."""
    names = names or ("--tiles",)
    return click.option(*names, "tiles", default=None, multiple=multiple, help=help)


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
    spelled like it (``--k`` for ``k``), or ``aliases[param]`` (a parameter name); other
    arguments the reason names in backticks (```chunk```) read as their options too.
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
            reason = _OTHER_ARGUMENT.sub(lambda m: _flag(ctx, m, aliases), exc.reason)
            return click.BadParameter(prefix + reason, ctx=ctx, param=param)
    return click.ClickException(prefix + str(exc))


#: An argument named in a reason, ```chunk``` in "must be a multiple of `chunk`".
_OTHER_ARGUMENT = re.compile(r"`([a-z_]+)`")


def _flag(ctx: click.Context, match: re.Match, aliases: dict[str, str] | None) -> str:
    """The option that sets the argument of ``match`` (``--chunk``), or the text as it was."""
    param = _option(ctx, (aliases or {}).get(match.group(1), match.group(1)))
    opts = [o for o in (param.opts if param is not None else ()) if o.startswith("--")]
    return opts[0] if opts else match.group(0)


def reports_user_errors(
    errors: Callable[[], tuple[type[BaseException], ...]],
    *,
    aliases: dict[str, str] | None = None,
) -> Callable:
    """Decorator of a click command: the errors a user can cause become click errors.

    Parameters
    ----------
    errors : callable returning exception types
        Called only when the command raises, so the library's error classes are
        imported then and not at start-up.
    aliases : ``{library argument: click parameter name}``, keyword-only
        Passed to :func:`user_error`.
    """

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except click.ClickException:
                raise
            except Exception as exc:
                if not isinstance(exc, errors()):
                    raise
                raise user_error(exc, aliases=aliases) from exc

        return wrapper

    return decorate


def announce_start(prog: str, loading: str) -> None:
    """On a terminal, say at once which command starts and what it loads (torch takes
    4-17 s to import on a busy machine, during which nothing else appears); silent when
    stderr is a pipe or file, and for ``--help``/``-h``."""
    import sys

    ctx = click.get_current_context()
    if not sys.stderr.isatty() or ctx.resilient_parsing:
        return
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        return
    click.echo(f"{prog} {ctx.invoked_subcommand or ''}: loading {loading}...", err=True)
