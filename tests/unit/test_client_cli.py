"""kubeca_client.cli: argument helpers, and the refusals that happen before any network call."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.cli import CONFIG_ENV, _parser, main, parse_duration, parse_params
from kubeca_client.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("600s", timedelta(seconds=600)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "90", "d", "1.5h", "1h 30m", " 1h", "1w", "-5m", "1H", "1h-"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a duration like 90d"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0d0h"])
def test_parse_duration_refuses_zero(text: str) -> None:
    # A zero lifetime would silently mean "the server's default" on the wire.
    with pytest.raises(InvalidArgument, match="not a positive duration"):
        parse_duration(text)


def test_parse_duration_refuses_what_overflows() -> None:
    with pytest.raises(InvalidArgument, match="longer than any certificate may live"):
        parse_duration("1000000000d")


def test_parse_params_refuses_bytes_that_are_not_utf8() -> None:
    # How Python hands over argv bytes that are not UTF-8: as lone surrogates.
    with pytest.raises(InvalidArgument, match="not printable UTF-8"):
        parse_params(["node_name=\udcff"])


def test_parse_params() -> None:
    assert parse_params(["node_name=cp-1", "extra_sans=a.example,10.0.0.1", "empty="]) == {
        "node_name": "cp-1",
        "extra_sans": "a.example,10.0.0.1",
        "empty": "",
    }


def test_parse_params_keeps_equals_signs_in_the_value() -> None:
    assert parse_params(["x=a=b"]) == {"x": "a=b"}


def test_parse_params_empty() -> None:
    assert parse_params([]) == {}


@pytest.mark.parametrize("item", ["node_name", "=cp-1", ""])
def test_parse_params_refuses_a_malformed_item(item: str) -> None:
    with pytest.raises(InvalidArgument, match="must be NAME=VALUE"):
        parse_params([item])


def test_parse_params_refuses_a_repeated_name() -> None:
    with pytest.raises(InvalidArgument, match="node_name is given twice"):
        parse_params(["node_name=a", "node_name=b"])


def test_issue_refuses_a_bad_param_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["issue", "--profile", "admin", "--param", "oops"]
    argv += ["--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "must be NAME=VALUE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_issue_never_overwrites_a_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "admin.key"
    key.write_bytes(b"precious")
    argv = ["issue", "--profile", "admin", "--key-out", str(key), "--cert-out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "never overwrites a private key" in capsys.readouterr().err
    assert key.read_bytes() == b"precious"


def test_issue_refuses_a_bad_lifetime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["issue", "--profile", "admin", "--lifetime", "ten days"]
    argv += ["--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "'ten days' is not a duration" in capsys.readouterr().err


def test_issue_refuses_a_missing_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["issue", "--profile", "admin", "--key-out", str(tmp_path / "k")]
    argv += ["--cert-out", str(tmp_path / "nope" / "c")]
    assert main(argv) == 2
    assert "--cert-out: directory" in capsys.readouterr().err


def test_issue_refuses_an_unknown_key_algorithm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["issue", "--profile", "admin", "--key-algorithm", "DSA"]
    argv += ["--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "--key-algorithm: unknown key algorithm 'DSA'" in capsys.readouterr().err


def test_issue_without_a_client_config_is_a_config_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    argv = ["issue", "--profile", "admin"]
    argv += ["--key-out", str(tmp_path / "k"), "--cert-out", str(tmp_path / "c")]
    assert main(argv) == 78
    assert CONFIG_ENV in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _commands(parser: argparse.ArgumentParser, path: str = "kubeca") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_of_every_command_says_what_it_means() -> None:
    silent = [
        f"{path}: {action.option_strings or action.dest}"
        for path, action in _commands(_parser())
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert silent == []


def test_every_command_has_a_one_line_summary() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                for name, sub in action.choices.items():
                    if name not in helped:
                        yield f"{path} {name}"
                    yield from walk(sub, f"{path} {name}")

    assert list(walk(_parser(), "kubeca")) == []
