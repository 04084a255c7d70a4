"""Every ``dinowm`` command prints its help (help texts are rendered as rich markup: a stray ``[/x]`` breaks it)."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from ray_jobs.cli import app


def _paths(group, prefix=()):
    commands = getattr(group, "commands", {})
    for name, command in commands.items():
        yield (*prefix, name)
        yield from _paths(command, (*prefix, name))


@pytest.mark.parametrize("path", sorted(_paths(get_command(app))), ids=" ".join)
def test_help(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
