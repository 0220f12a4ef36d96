"""The `stoker` command line's argument handling, without a daemon: global flags before the
command, the usage a usage error shows, choices that catch typos, and `--json` results
that carry every field."""

from __future__ import annotations

import json

import pytest

from daemon.cli.common import complete_result
from daemon.cli.main import hoist_global_flags, main
from protocol import messages as m


@pytest.mark.parametrize(("argv", "expected"), [
    (["--json", "ls"], ["ls", "--json"]),
    (["--socket", "/s", "--json", "workspace", "ls"], ["workspace", "ls", "--socket", "/s",
                                                        "--json"]),
    (["--config=/c", "send", "--", "--json"], ["send", "--config=/c", "--", "--json"]),
    (["send", "--json", "hi"], ["send", "--json", "hi"]),
    (["--version"], ["--version"]),
    (["--config"], ["--config"]),
])
def test_global_flags_before_the_command_move_after_it(argv: list[str],
                                                       expected: list[str]) -> None:
    assert hoist_global_flags(argv) == expected


def test_json_before_the_command_is_taken(capfd: pytest.CaptureFixture[str],
                                          tmp_path: object) -> None:
    """`stoker --json status` used to be `unrecognized arguments: --json`; now it is
    `status --json`: with no daemon, its JSON error, not a usage error."""
    status = main(["--json", "--socket", f"{tmp_path}/none.sock", "status"])
    out = capfd.readouterr().out
    assert status == 1
    assert json.loads(out)["error"]["code"] == "daemon_not_running"


def test_a_usage_error_shows_the_usage_of_its_command(
        capfd: pytest.CaptureFixture[str]) -> None:
    """Wrong arguments of `stoker send` show `stoker send`'s usage, not `stoker COMMAND
    ...`'s: unrecognized options, and errors found after parsing alike."""
    with pytest.raises(SystemExit) as exited:
        main(["send", "--bogus", "hi"])
    assert exited.value.code == 2
    err = capfd.readouterr().err
    assert err.startswith("usage: stoker send "), err
    assert "stoker send: error: unrecognized arguments: --bogus (text that starts with '-' "\
        "goes after `--`: stoker send -- --bogus ...)" in err

    # A usage error raised by the command itself (here: an image that is not one).
    assert main(["send", "--socket", "/nonexistent/s", "--image", __file__, "hi"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("usage: stoker send "), err
    assert "does not look like an image" in err


def test_ls_refuses_a_state_that_does_not_exist(capfd: pytest.CaptureFixture[str]) -> None:
    """A typo in `--state` used to list nothing, silently; now it is a usage error that
    lists the states."""
    with pytest.raises(SystemExit) as exited:
        main(["ls", "--state", "hibernating"])
    assert exited.value.code == 2
    err = capfd.readouterr().err
    assert err.startswith("usage: stoker ls "), err
    assert "invalid choice: 'hibernating'" in err
    assert "'hibernated'" in err


def test_json_results_carry_every_field() -> None:
    """The wire leaves out fields at their default; `--json` prints them: an empty list is
    `[]`, an unset value `null`, at any depth."""
    assert complete_result(m.ComputerList()) == {"computers": []}
    done = complete_result(m.TaskList(agents=["echo"]))
    assert done == {"tasks": [], "agents": ["echo"]}
    chats = complete_result(m.ChatList(chats=[m.ChatSummary(chat="c", agent="echo",
                                                            state="hibernated", cwd="/")]))
    assert chats["chats"][0]["pid"] is None
    assert chats["chats"][0]["turns"] == 0


def test_stoker_alone_lists_the_commands(capfd: pytest.CaptureFixture[str]) -> None:
    """It said `the following arguments are required: COMMAND`, and no command."""
    assert main([]) == 2
    err = capfd.readouterr().err
    assert err.startswith("usage: stoker ")
    assert "send      send a prompt to a chat and stream the reply" in err


def test_a_usage_error_of_a_group_action_names_the_action(
        capfd: pytest.CaptureFixture[str]) -> None:
    """`stoker workflow run --input x` said `stoker workflow: error: ...`."""
    assert main(["workflow", "run", "wf", "--input", "files"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("usage: stoker workflow run "), err
    assert "\nstoker workflow run: error: --input 'files': write KEY=VALUE" in err


def test_a_huge_since_is_the_epoch_not_a_traceback() -> None:
    """`stoker stats --since 99999999d` printed a traceback (year -271764 is out of range)."""
    from daemon.cli.trace import parse_since

    assert parse_since("99999999d", 1e9) == 0.0
    assert parse_since("1d", 1e9) == 1e9 - 86400


@pytest.mark.parametrize("command", ["attach", "log"])
def test_a_negative_since_is_a_usage_error(command: str,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """`attach --since -1` said `since.seq must not be negative` (the protocol's field);
    `log --since -1` read it as 0, silently."""
    assert main([command, "c", "--since", "-1", "--socket", "/nonexistent/s"]) == 2
    assert f"stoker {command}: error: --since takes a seq (0 or more)" in capfd.readouterr().err
