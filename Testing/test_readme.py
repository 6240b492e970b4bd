"""The README's ``xraytoct`` command list agrees with the argparse parser (issue 14 item 13):
every subcommand is listed, every flag of each subcommand is mentioned, and a flag is shown
as required (outside brackets) exactly when the parser requires it."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from XRayToCTLib.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def readme_commands(text: str) -> dict[str, str]:
    """``{subcommand: its synopsis}`` from the fenced block under "## The `xraytoct`
    command" (continuation lines, indented, belong to the command above; ``# …`` comments
    are dropped)."""
    section = text.split("## The `xraytoct` command", 1)[1]
    block = section.split("```", 2)[1]
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines()[1:]:  # the first line is the fence's info string
        line = line.split("  #", 1)[0].rstrip()
        if line.startswith("xraytoct "):
            current = line.split()[1]
            assert current not in commands, f"{current} listed twice"
            commands[current] = line
        elif line.strip() and current is not None:
            commands[current] += " " + line.strip()
    return commands


def flag_depths(synopsis: str) -> dict[str, bool]:
    """``{flag: shown as required}``: a flag is required when it stands outside every ``[…]``
    and every ``(… | …)`` group of alternatives."""
    shown: dict[str, bool] = {}
    depth = 0
    for token in re.finditer(r"[\[\]()]|--[a-z][a-z0-9-]*", synopsis):
        t = token.group()
        if t in "[(":
            depth += 1
        elif t in "])":
            depth -= 1
        else:
            shown[t] = shown.get(t, False) or depth == 0
    assert depth == 0, f"unbalanced brackets in {synopsis!r}"
    return shown


def parser_flags() -> dict[str, dict[str, bool]]:
    """``{subcommand: {flag: required}}`` from the parser (hidden flags left out; a flag's
    first long spelling)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, dict[str, bool]] = {}
    for name, p in sub.choices.items():
        flags = {}
        for action in p._actions:
            longs = [s for s in action.option_strings if s.startswith("--")]
            if not longs or action.dest == "help" or action.help == argparse.SUPPRESS:
                continue
            flags[longs[0]] = bool(action.required)
        out[name] = flags
    return out


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
PARSER = parser_flags()


def test_every_subcommand_is_listed_and_nothing_else():
    assert sorted(COMMANDS) == sorted(PARSER)


@pytest.mark.parametrize("command", sorted(PARSER))
def test_flags_match_the_parser(command):
    shown = flag_depths(COMMANDS.get(command, ""))
    flags = PARSER[command]
    assert sorted(set(flags) - set(shown)) == [], f"{command}: flags missing from the README"
    assert sorted(set(shown) - set(flags)) == [], f"{command}: flags the parser does not have"
    wrong = {f: ("required" if flags[f] else "optional") for f in flags if shown[f] != flags[f]}
    assert wrong == {}, f"{command}: README shows these the wrong way (parser says)"


def test_the_checker_sees_a_drifted_line():
    """The parsing itself: a required flag in brackets and a missing one are found."""
    shown = flag_depths("xraytoct train [--model NAME] (--a X | --b Y) --out DIR [--x [--y]]")
    assert shown == {"--model": False, "--a": False, "--b": False, "--out": True,
                     "--x": False, "--y": False}
    cmds = readme_commands("## The `xraytoct` command\n\n```\nxraytoct a --p  # c --q\n"
                           "           [--r]\nxraytoct b\n```\n")
    assert cmds == {"a": "xraytoct a --p [--r]", "b": "xraytoct b"}


def test_test_data_paths_are_resolved():
    """Skip reasons print a resolved ../shared/data (no ``XRayToCT/../shared``)."""
    for f in sorted((REPO / "Testing").glob("*.py")):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r'/\s*"\.\."\s*/', text), f"{f.name} builds a path with '..'"
