"""The CLI's mistakes of the user's own (a file, a setting, an argument) are one line and exit
code 2, refused before any call; never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nyxflow.cli.connection import run_async
from nyxflow.cli.main import app
from nyxflow.cli.supervisor import Supervisor


@pytest.fixture(autouse=True)
def nothing_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNS_ADDR", "ENGINE_ADDR"):
        monkeypatch.setenv(f"NYXFLOW_{name}", "127.0.0.1:1")
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps a long message at 80


def refused(*args: str) -> str:
    """The one line of a usage error."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_a_template_file_that_is_missing_a_directory_or_not_utf8(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert f"file: no such file or directory: {missing}" in refused(
        "workflow", "create", "-f", str(missing)
    )
    assert "file: is a directory" in refused("workflow", "create", "-f", str(tmp_path))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\nsteps:\n  - name: a\n".encode("latin-1"))
    assert f"file: not UTF-8 text (byte 9): {latin1}" in refused(
        "workflow", "create", "-f", str(latin1)
    )


def test_brackets_in_a_file_name_are_printed_not_taken_for_markup(tmp_path: Path) -> None:
    odd = tmp_path / "[bold]x[/bold].yaml"
    assert str(odd) in refused("workflow", "create", "-f", str(odd))


@pytest.mark.parametrize(
    "key",
    ["dev-key\n", "dév-key", "dev key", "x" * 513, ""],
    ids=["newline", "non-ascii", "space", "513 chars", "empty"],
)
def test_an_api_key_grpc_cannot_carry_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("NYXFLOW_API_KEY", key)
    assert "NYXFLOW_API_KEY: malformed API key" in refused("workflow", "list")


def test_an_admin_key_grpc_cannot_carry_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NYXFLOW_ADMIN_KEY", "nyx_admin_key\r\n")
    assert "NYXFLOW_ADMIN_KEY: malformed API key" in refused("admin", "tenant", "list")


def test_up_checks_the_key_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(self: Supervisor, name: str) -> None:
        raise AssertionError(f"{name} started")

    monkeypatch.setattr(Supervisor, "start", start)
    monkeypatch.setenv("NYXFLOW_API_KEY", "dev-key\n")
    assert "NYXFLOW_API_KEY: malformed API key" in refused("up")


def test_a_setting_of_the_wrong_type_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NYXFLOW_RPC_TIMEOUT_S", "ten")
    assert "NYXFLOW_RPC_TIMEOUT_S: Input should be a valid number" in refused("run", "list")


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_an_execute_silence_that_is_not_a_positive_number_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NYXFLOW_EXECUTE_SILENCE_S", value)
    assert "NYXFLOW_EXECUTE_SILENCE_S: " in refused("run", "follow", "run-1")


def test_arguments_not_utf8_are_refused_by_name(tmp_path: Path) -> None:
    # How Python hands over argv bytes that are not UTF-8.
    assert "workflow_id: not valid UTF-8" in refused("workflow", "show", "wf-\udcff")
    repo = str(tmp_path / "r\udcff")
    assert "path: not valid UTF-8" in refused("project", "add-repo", "p", "o", "r", repo)


def test_an_os_error_is_one_line_and_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    @run_async
    async def command() -> None:
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == "error: Connection reset by peer\n"


@pytest.mark.parametrize(
    "args",
    [
        ("step", "select", "s", "99999999999"),
        ("step", "retry", "s", "--max-tokens", "99999999999"),
        ("step", "retry", "s", "--auto-continue", "2147483648"),
    ],
    ids=["index", "max-tokens", "auto-continue"],
)
def test_a_number_beyond_the_wire_s_int32_is_refused_naming_it(args: tuple[str, ...]) -> None:
    """The request could not be built (protobuf's ValueError): a traceback was all one saw.
    Now a usage error as the CLI's parser gives it, naming the argument and its bound."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "2147483647" in result.stderr, result.stderr
    assert ("'index'" if args[1] == "select" else args[3]) in result.stderr, result.stderr


def test_a_long_error_is_one_line_however_narrow_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rich wrapped stderr at 80 columns when it was a pipe: one error, two lines."""
    monkeypatch.setenv("COLUMNS", "40")
    result = CliRunner().invoke(app, ["workflow", "create", "-f", "/no/such/folder/" + "x" * 80])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "x" * 80 in result.stderr, result.stderr
