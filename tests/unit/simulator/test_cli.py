"""The command line: option parsing, errors, and mounting as ``flatgigs simulate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from server.simulator import cli
from server.simulator.cli import parse_duration, parse_failure, simulate

runner = CliRunner()


def test_durations() -> None:
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == parse_duration(" 1.5m ") == 90.0
    assert (
        parse_duration("2h") == 7200.0
        and parse_duration("7d") == 604800.0
        and parse_duration("1w") == 604800.0
    )
    assert parse_duration("250ms") == 0.25
    assert parse_duration("-2h", allow_negative=True) == -7200.0
    for bad in ("", "soon", "5 parsecs", "-1"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_failures() -> None:
    assert parse_failure("freezer-03-2@120") == ("freezer-03-2", 120.0)
    assert parse_failure("freezer-03-2@2h") == ("freezer-03-2", 7200.0)
    assert parse_failure("freezer-03-2@-1h") == ("freezer-03-2", -3600.0)
    assert parse_failure("freezer-03-2") == ("freezer-03-2", 0.0)
    for bad in ("@120", "freezer-03-2@later"):
        with pytest.raises(ValueError):
            parse_failure(bad)


def test_mounted_as_a_command_of_the_main_cli() -> None:
    main = typer.Typer()
    main.command("version")(lambda: None)
    main.command("simulate")(simulate)  # what server/cli.py does
    result = runner.invoke(main, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in (
        "--api",
        "--token",
        "--mqtt",
        "--coap",
        "--stores",
        "--speed",
        "--duration",
        "--seed",
        "--fail",
        "--backfill",
        "--modbus-port",
        "--opcua-port",
        "--bind-host",
        "--listen-host",
        "--unbind-on-exit",
    ):
        assert option in result.output


def test_bad_options_exit_2(tmp_path: Path) -> None:
    env = {"FLATGIGS_DATA_DIR": str(tmp_path), "FLATGIGS_TOKEN": "", "COLUMNS": "200"}
    result = runner.invoke(cli.app, ["--token", "fg.t.k.s", "--duration", "soon"], env=env)
    assert result.exit_code == 2 and "not a duration" in result.output
    result = runner.invoke(cli.app, ["--token", "fg.t.k.s", "--fail", "@5"], env=env)
    assert result.exit_code == 2
    result = runner.invoke(cli.app, ["--duration", "5"], env={"FLATGIGS_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2 and "--token" in result.output
    result = runner.invoke(cli.app, ["--token", "fg.t.k.s", "--speed", "60"], env=env)
    assert result.exit_code == 2 and "needs --duration" in result.output
    result = runner.invoke(cli.app, ["--token", "fg.t.k.s", "--duration", "0"], env=env)
    assert result.exit_code == 2 and "nothing to do" in result.output
    result = runner.invoke(
        cli.app, ["--token", "fg.t.k.s", "--modbus-port", "5020", "--opcua-port", "5020"], env=env
    )
    assert result.exit_code == 2 and "must differ" in result.output
    result = runner.invoke(
        cli.app, ["--token", "fg.t.k.s", "--modbus-port", "5020", "--stores", "248"], env=env
    )
    assert result.exit_code == 2 and "at most 247 stores" in result.output
    result = runner.invoke(cli.app, ["--token", "fg.t.k.s", "--opcua-port", "0"], env=env)
    assert result.exit_code == 2


def test_the_demo_token_is_the_default(tmp_path: Path) -> None:
    (tmp_path / "demo-credentials.json").write_text(json.dumps({"token": "fg.acme-retail.k.s"}))
    assert cli._demo_token(tmp_path) == "fg.acme-retail.k.s"
    assert cli._demo_token(tmp_path / "nowhere") is None


def test_errors_exit_1(tmp_path: Path) -> None:
    # The token is not a tenant token: the session cannot start.
    result = runner.invoke(
        cli.app,
        ["--token", "fgo.k.s", "--duration", "1", "--no-progress"],
        env={"FLATGIGS_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1 and "tenant token" in result.output
