"""Help texts render whole: typer prints them as Rich markup, where an unescaped `[word ...]`
is a tag and vanishes from the terminal (issue 19: `mock-server --help` lost `[x - J, x + J]`)."""

from __future__ import annotations

import importlib

import click
import typer.main
from rich.markup import render

from app import cli


def _helps(command: click.Command, path: tuple[str, ...] = ()):
    yield path, "(command)", command.help or ""
    for param in command.params:
        yield path, param.name, getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _helps(sub, (*path, name))


def _load_commands() -> None:
    for module in set(cli.COMMAND_MODULES.values()):  # importing one registers its commands
        importlib.import_module(f"app.{module}")


def test_every_option_help_shows_all_its_text_in_the_terminal() -> None:
    _load_commands()
    lost = [(path, name, text) for path, name, text in _helps(typer.main.get_command(cli.app))
            if render(text).plain != text.replace("\\[", "[")]
    assert lost == []


def test_mock_server_help_keeps_its_jitter_interval() -> None:
    _load_commands()
    command = typer.main.get_command(cli.app).commands["mock-server"]
    jitter = next(p for p in command.params if p.name == "jitter_ms")
    assert "[x - J, x + J]" in render(jitter.help).plain
