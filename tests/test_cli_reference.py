"""The README's CLI reference is what the commands' ``--help`` says."""

from __future__ import annotations

import importlib.util
import re
import sys

import click
from click.testing import CliRunner
from helpers import ROOT

REGENERATE = "python scripts/cli_reference.py"


def _script():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" /
                                                  "cli_reference.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_cli_reference_is_generated_from_the_commands():
    ref = _script()
    assert ref.COMMAND == REGENERATE
    _, section, _ = ref.split_readme((ROOT / "README.md").read_text())
    assert section == ref.render(), (
        "README.md's CLI reference differs from the click commands (their --help). "
        f"Regenerate it with: {REGENERATE}   (from the repository root, in the .venv)"
    )


def test_every_option_of_every_help_is_in_the_readme():
    ref = _script()
    _, section, _ = ref.split_readme((ROOT / "README.md").read_text())
    parts = re.split(r"^### `([^`]+)`$", section, flags=re.M)
    by_command = dict(zip(parts[1::2], parts[2::2], strict=True))
    for prog, group in ref._groups():
        for name in group.commands:
            out = CliRunner().invoke(group, [name, "--help"]).output
            options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", out.split("Options:")[1]))
            text = by_command[f"{prog} {name}"]
            missing = sorted(o for o in options if f"{o}" not in text and o not in ("-h", "--help"))
            assert not missing, f"{prog} {name}: {missing} not in README; run {REGENERATE}"


def test_the_script_rewrites_a_stale_section(tmp_path, monkeypatch):
    ref = _script()
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    before, section, after = ref.split_readme(text)
    readme.write_text(f"{before}\n\n| stale |\n\n{after}")
    monkeypatch.setattr(ref, "README", readme)
    assert ref.main(["--check"]) == 1
    assert ref.main([]) == 0
    assert readme.read_text() == text
    assert ref.main(["--check"]) == 0


def test_the_groups_are_the_installed_commands():
    from npa_precompute.cli import main as precompute
    from npa_train.cli import main as train

    assert [g for _, g in _script()._groups()] == [precompute, train]
    assert all(isinstance(g, click.Group) for g in (precompute, train))
