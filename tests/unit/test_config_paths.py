"""Config parsing (typed, strict, clear errors) and where the daemon's files live."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config.agents import ECHO, registry
from daemon.config.file import (
    format_duration,
    load,
    machine_memory,
    parse,
    parse_duration,
    parse_size,
)
from daemon.config.paths import resolve
from daemon.errors import ConfigError


def test_defaults_when_the_file_is_missing(tmp_path: Path) -> None:
    config = load(tmp_path / "nope.toml")
    assert float(config.lifecycle.idle_ttl) == 1800.0
    assert config.lifecycle.max_warm == 16
    budget = config.lifecycle.memory_budget
    assert budget is not None
    assert budget.share == 50  # half of this machine's memory
    assert budget == machine_memory() // 2
    assert config.permissions.policy == "ask"
    assert config.websocket.enabled is False
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", must_exist=True)


@pytest.mark.parametrize(("text", "message"), [
    ("[lifecycle]\nidle_tt = 1\n", "unknown key `idle_tt`"),
    ("[lifecycl]\n", "unknown key `lifecycl`"),
    ('[lifecycle]\nidle_ttl = "soon"\n', "invalid duration 'soon'"),
    ('[lifecycle]\nmemory_budget = "lots"\n', "invalid memory budget 'lots'"),
    ('[lifecycle]\nmemory_budget = "120%"\n', "between 0% and 100%"),
    ("[agents.x]\ncommand = []\n", "[agents.x]"),
    ('[agents.x]\ncommand = ["a"]\nbogus = 1\n', "unknown key `bogus`"),
    ('[agents."bad name"]\ncommand = ["a"]\n', "invalid agent name"),
    ('[agents.r]\ncommand = ["a"]\ncomputer = "nowhere"\n', "[computers.nowhere]"),
    ("this is not toml", "not valid TOML"),
    ('[permissions]\npolicy = "maybe"\n', "policy"),
])
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text, source="cfg.toml")
    assert message in error.value.message
    assert error.value.message.startswith("cfg.toml")


@pytest.mark.parametrize(("text", "hint"), [
    ("[lifecycle]\nidle_tt = 1\n", "did you mean `idle_ttl`?"),
    ("[lifecycl]\n", "did you mean `lifecycle`?"),
    ('[daemon]\nlog_levl = "info"\n', "did you mean `log_level`?"),
    ('[computers.a]\nhost = "h"\nprot = 2\n', "did you mean `port`?"),
    ('[agents.x]\ncommand = ["a"]\nenvv = {}\n', "did you mean `env`?"),
])
def test_unknown_keys_suggest_the_closest_known_one(text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text, source="cfg.toml")
    assert error.value.message.endswith(hint)


def test_unknown_keys_far_from_any_known_one_get_no_suggestion() -> None:
    with pytest.raises(ConfigError) as error:
        parse("[lifecycle]\nzzzzzz = 1\n", source="cfg.toml")
    assert "unknown key `zzzzzz`" in error.value.message
    assert "did you mean" not in error.value.message


@pytest.mark.parametrize(("text", "message"), [
    ('[daemon]\nlog_level = "verbose"\n',
     "at `$.daemon.log_level`; one of `debug`, `error`, `info`, `warning`"),
    ('[permissions]\npolicy = "yes"\n', "one of `allow`, `ask`, `deny`"),
    ("[websocket]\nport = 99999\n", "Expected `int` <= 65535 - at `$.websocket.port`"),
    ('[computers.a]\nhost = "h"\nport = 70000\n', "Expected `int` <= 65535"),
])
def test_a_value_out_of_its_set_or_range_is_refused_with_what_is_allowed(
        text: str, message: str) -> None:
    """A log level out of its set named no level; port 99999 was accepted and bound as
    34463 (it wraps at 65536)."""
    with pytest.raises(ConfigError) as error:
        parse(text, source="cfg.toml")
    assert message in error.value.message


def test_a_command_string_is_split_like_a_shell_would() -> None:
    config = parse('[agents.q]\ncommand = "qwen --acp --model \'big one\'"\n')
    assert config.agents["q"].command == ["qwen", "--acp", "--model", "big one"]


def test_a_command_string_that_cannot_be_split_says_how_to_write_it() -> None:
    with pytest.raises(ConfigError) as error:
        parse('[agents.q]\ncommand = "qwen \\"unclosed"\n', source="cfg.toml")
    assert error.value.message.startswith("cfg.toml: [agents.q]: command")
    assert 'command = ["qwen", "--acp"]' in error.value.message


def test_agents_from_config_override_and_disable_builtins() -> None:
    config = parse('[agents.qwen]\ncommand = ["my-qwen", "--acp"]\nenv = {A = "1"}\n'
                   '[agents.goose]\ncommand = ["goose"]\nenabled = false\n'
                   '[agents.mine]\ncommand = ["/bin/true"]\n')
    agents = registry(config)
    assert agents["qwen"].command == ("my-qwen", "--acp")
    assert agents["qwen"].env == {"A": "1"}
    assert agents["qwen"].source == "config"
    assert "goose" not in agents
    assert agents["mine"].available() == (True, "")
    assert agents[ECHO].available() == (True, "")
    assert agents["opencode"].available()[0] is False or agents["opencode"].command[0]


@given(st.integers(0, 10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_durations_round_trip(value: int, unit: str) -> None:
    seconds = parse_duration(f"{value}{unit}")
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_sizes() -> None:
    assert parse_size("8GiB") == 8 * 1024**3
    assert parse_size("512MB") == 512 * 1000**2
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("-1")


def test_paths_flag_then_env_then_xdg(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/7"}
    default = resolve(env=env)
    assert default.socket == Path("/run/user/7/stoker/stoker.sock")
    assert default.state_dir == Path("/home/u/.local/state/stoker")
    assert default.config == Path("/home/u/.config/stoker/config.toml")
    assert default.database == Path("/home/u/.local/state/stoker/stoker.db")
    assert default.config_explicit is False
    no_runtime = resolve(env={"HOME": "/home/u"})
    assert str(no_runtime.socket).startswith("/tmp/stoker-")
    from_env = resolve(env={**env, "STOKER_SOCKET": "/s.sock", "STOKER_STATE_DIR": "/st",
                            "STOKER_CONFIG": "/c.toml"})
    assert (from_env.socket, from_env.state_dir, from_env.config) == (
        Path("/s.sock"), Path("/st"), Path("/c.toml"))
    assert from_env.config_explicit is True
    flags = resolve(socket="/f.sock", state_dir="/fs", config="/fc.toml",
                    env={**env, "STOKER_SOCKET": "/s.sock"})
    assert (flags.socket, flags.state_dir, flags.config) == (
        Path("/f.sock"), Path("/fs"), Path("/fc.toml"))


@pytest.mark.parametrize("text", [
    "agents = 5\n",
    'agents = "qwen"\n',
    "agents = [1]\n",
    'computers = "build1"\n',
])
def test_a_section_that_is_not_a_table_is_a_config_error(text: str) -> None:
    """`agents`/`computers` given as a value instead of a table is the user's mistake: a
    `ConfigError` naming the key, not an `AttributeError` out of the parser (the daemon,
    `stoker doctor` and a reload all parse the file)."""
    section = text.split(" ", 1)[0]
    with pytest.raises(ConfigError, match=rf"Expected `object`, got .* at `\$\.{section}`"):
        parse(text)
