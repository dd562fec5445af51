"""Write the README's CLI reference from the click commands, so that it cannot drift.

The section between the two markers in README.md (``<!-- cli-reference:begin ...`` and
``<!-- cli-reference:end -->``) is generated from the ``npa-precompute`` and ``npa-train``
click groups: per command its usage line, its help text and a table of every option
(names, value, default, help) — what ``--help`` prints. Change an option's help in the
click command, then regenerate:

    python scripts/cli_reference.py          # rewrites the section of README.md
    python scripts/cli_reference.py --check  # exit status 1 (and a diff) when it is stale

``tests/test_cli_reference.py`` fails when the README and the commands disagree.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = "python scripts/cli_reference.py"
BEGIN = f"<!-- cli-reference:begin (generated: edit the click commands, then run {COMMAND}) -->"
END = "<!-- cli-reference:end -->"


def _groups() -> list[tuple[str, click.Group]]:
    from npa_precompute.cli import main as precompute
    from npa_train.cli import main as train

    return [("npa-precompute", precompute), ("npa-train", train)]


def _text(text: str) -> str:
    """Help text as markdown: one line, ``<`` escaped (``<f>`` is no HTML tag)."""
    return " ".join(str(text).replace("\b", "").split()).replace("<", "&lt;")


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped (in code spans too)."""
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`"


def _option_names(param: click.Option, ctx: click.Context) -> str:
    names = ", ".join(param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not param.is_flag and not param.count:
        names += " " + param.make_metavar(ctx)
    return names


def _default(param: click.Option, ctx: click.Context) -> str:
    if param.required:
        return "required"
    default = param.get_default(ctx, call=False)
    if default is not None and not isinstance(default, (str, int, float, tuple, list)):
        return "–"  # a callable, or click's marker for "no default"
    if param.is_flag and not param.secondary_opts:
        return "off" if not default else "on"
    if param.is_flag:
        return "–" if default is None else ("on" if default else "off")
    if default is None or default == ():
        return "–"
    if param.multiple:
        return ", ".join(_code(v) for v in default)
    return _code(default)


def _help_text(cmd: click.Command) -> str:
    text = inspect.cleandoc(cmd.help or "")
    paragraphs = [p for p in text.split("\n\n") if p.strip() and p.strip() != "\b"]
    return "\n\n".join(_text(p) for p in paragraphs)


def _command_section(prog: str, name: str, cmd: click.Command, parent: click.Context) -> str:
    ctx = click.Context(cmd, info_name=name, parent=parent)
    usage = " ".join([f"{prog} {name}", *cmd.collect_usage_pieces(ctx)])
    lines = [f"### `{prog} {name}`", "", f"`{usage}`", "", _help_text(cmd), ""]
    lines += ["| option | default | meaning |", "|---|---|---|"]
    help_option = cmd.get_help_option(ctx)
    for param in cmd.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden or param is help_option:
            continue
        row = [_code(_option_names(param, ctx)), _default(param, ctx), _text(param.help or "")]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def render() -> str:
    """The generated section (between the markers, markers excluded)."""
    parts = []
    for prog, group in _groups():
        ctx = click.Context(group, info_name=prog, **group.context_settings)
        helps = ", ".join(group.get_help_option_names(ctx))
        parts.append(
            f"### `{prog}`\n\n{_help_text(group)} Options: `{helps}` (also after each "
            "command), `--version`."
        )
        for name, cmd in group.commands.items():
            parts.append(_command_section(prog, name, cmd, ctx))
    return "\n\n".join(parts)


def split_readme(text: str) -> tuple[str, str, str]:
    """``(before, section, after)`` of README text around the markers.

    Raises
    ------
    ValueError
        A marker is missing or they are out of order.
    """
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    body = start + len(BEGIN)
    return text[:body], text[body:stop].strip("\n"), text[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    before, section, after = split_readme(text)
    fresh = render()
    if args.check:
        if section == fresh:
            return 0
        diff = difflib.unified_diff(
            section.splitlines(), fresh.splitlines(), "README.md", "--help", lineterm=""
        )
        print("\n".join(diff))
        print(f"\nREADME.md's CLI reference is stale: run {COMMAND}", file=sys.stderr)
        return 1
    new = f"{before}\n\n{fresh}\n\n{after}"
    if new != text:
        README.write_text(new)
        print(f"updated the CLI reference in {README}")
    else:
        print(f"the CLI reference in {README} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
