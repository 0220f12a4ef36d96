"""Real third-party agents for the e2e tests, installed from npm on demand.

`ensure(QWEN)` returns the `qwen` binary of a pinned `@qwen-code/qwen-code`, installing it
into a cache directory the first time (`<repo>/.cache/e2e-npm/`, ignored by git, kept between
runs), or says why it cannot (no node/npm, node too old, npm failed: with npm's last lines).
Tests turn that reason into a visible skip.

Installs are idempotent and safe to race: one lock file per package version (`flock`, so
two pytest processes wait for each other instead of installing twice into one directory), a
stamp file written only after `npm install` succeeded, and a directory without its stamp is
wiped and installed again. Nothing here touches the network except `npm install` itself.

Environment knobs: `STOKER_E2E_NPM_CACHE` (another cache directory),
`STOKER_E2E_QWEN_VERSION` (comma-separated releases to test instead of the pinned pair),
`STOKER_E2E_OPENCODE_VERSION` (another opencode-ai release).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE_DIR = Path(os.environ.get("STOKER_E2E_NPM_CACHE") or ROOT / ".cache" / "e2e-npm")

QWEN_VERSION = "0.24.4"
"""The newest @qwen-code/qwen-code (measured 2026-11). Its `engines` asks for node 22, but
every flow here passes on node 20.20. ACP: `--acp`, loadSession, sessionCapabilities
list/resume, and session/resume really works. Its first `available_commands_update` is one
~560 KB line."""
QWEN_LOAD_VERSION = "0.15.10"
"""The newest release whose `engines` admits node 20. It advertises
sessionCapabilities.resume but answers session/resume with -32601, so it exercises the
daemon's fall-back to session/load against a real agent."""
QWEN_VERSIONS: tuple[str, ...] = tuple(
    os.environ["STOKER_E2E_QWEN_VERSION"].split(",") if os.environ.get("STOKER_E2E_QWEN_VERSION")
    else (QWEN_VERSION, QWEN_LOAD_VERSION))
"""What the qwen tests run against: each test once per release, except that the older
pinned one runs a representative subset (tests/e2e/test_qwen.py says which and why)."""
OPENCODE_VERSION = os.environ.get("STOKER_E2E_OPENCODE_VERSION") or "1.18.33"

QWEN_SETTINGS: dict[str, Any] = {
    # Offline and quiet: no update check, no usage statistics or telemetry export.
    "general": {"enableAutoUpdate": False, "checkpointing": {"enabled": False}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "ide": {"enabled": False},
    # Side calls to the model would eat scripted replies (FakeLLM only scripts requests
    # that offer tools, but memory agents offer tools too).
    "memory": {"enableManagedAutoMemory": False, "enableManagedAutoDream": False,
               "enableAutoSkill": False},
    "ui": {"enableFollowupSuggestions": False},
    "model": {"skipNextSpeakerCheck": True, "skipLoopDetection": True},
}
"""qwen's `~/.qwen/settings.json` for runs against the scripted loopback model."""
QWEN_ARGS = ("--acp", "--auth-type", "openai")
"""qwen's arguments: speak ACP, use the OpenAI-compatible endpoint of `qwen_env`."""


def qwen_env(base_url: str, home: Path, api_key: str = "test-key") -> dict[str, str]:
    """qwen's environment: the model at `base_url` (a loopback one), `home` as HOME, no
    telemetry, no proxy for loopback, no colour."""
    return {
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": api_key,
        "OPENAI_MODEL": "fake-model",
        "HOME": str(home),
        "QWEN_TELEMETRY_ENABLED": "false",
        "QWEN_USAGE_STATISTICS_ENABLED": "false",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "NO_COLOR": "1",
    }


def opencode_env(home: Path) -> dict[str, str]:
    """opencode's environment: `home` as HOME and XDG base, no update, model list, LSP
    download, sharing, default plugins or Claude Code import, and its embedded npm pointed at
    a closed loopback port in offline mode (it installs its plugin package at start; with
    this, strace shows only loopback sockets)."""
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        "npm_config_registry": "http://127.0.0.1:9/",
        "npm_config_offline": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def write_opencode_config(home: Path, base_url: str, model: str = "fake-model") -> None:
    """opencode's `opencode.json` under `home` (XDG_CONFIG_HOME of `opencode_env`): one
    OpenAI-compatible provider `fake` at `base_url` (its SDK is bundled in the opencode
    binary: nothing is installed), its only model the default and the small model (titles
    are a side call to it)."""
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Fake",
                              "options": {"baseURL": base_url, "apiKey": "test-key"},
                              "models": {model: {"name": "Fake model"}}}},
        "model": f"fake/{model}",
        "small_model": f"fake/{model}",
        "share": "disabled",
        "autoupdate": False,
    }
    directory = home / ".config" / "opencode"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "opencode.json").write_text(json.dumps(config, indent=2))


MIN_NODE = 20
INSTALL_TIMEOUT = 900.0
LOCK_TIMEOUT = INSTALL_TIMEOUT + 60.0
STAMP = ".stoker-installed"


@dataclass(frozen=True)
class NpmTool:
    """An npm package that provides an agent binary."""

    package: str
    version: str
    binary: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.spec.lstrip("@"))


def qwen(version: str = QWEN_VERSION) -> NpmTool:
    return NpmTool("@qwen-code/qwen-code", version, "qwen")


QWEN = qwen()
OPENCODE = NpmTool("opencode-ai", OPENCODE_VERSION, "opencode")


@dataclass(frozen=True)
class Installed:
    """The outcome of `ensure`: a binary, or the reason there is none."""

    tool: NpmTool
    binary: Path | None
    reason: str = ""
    seconds: float = 0.0
    """Wall time of `ensure` (install, waiting for another installer, or just the checks)."""
    fresh: bool = False
    """True when this call ran `npm install`."""

    @property
    def skip_reason(self) -> str:
        return f"{self.tool.spec} unavailable: {self.reason}"


def node_problem() -> str | None:
    """Why node/npm cannot be used here, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        return f"{missing} not found on PATH"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`node --version` failed: {exc}"
    found = re.match(r"v(\d+)\.", out.stdout.strip())
    if found is None:
        return f"cannot read the node version from {out.stdout.strip()!r}"
    if int(found.group(1)) < MIN_NODE:
        return f"node {out.stdout.strip()} is too old (need >= {MIN_NODE})"
    return None


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive `flock` on `path`, waited for with a deadline. flock(2) has no timed wait
    and no notification of its release (a blocking call in a thread could not be abandoned
    at the deadline without taking the lock later), so the lock is polled: a condition
    checked under a deadline, held by another process installing the same package."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for {timeout:g}s") from None
                time.sleep(0.2)  # another process is installing; poll its lock
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed_binary(tool: NpmTool, prefix: Path) -> Path | None:
    """The binary of a complete install of exactly `tool.version` in `prefix`, or None."""
    binary = prefix / "node_modules" / ".bin" / tool.binary
    manifest = prefix / "node_modules" / tool.package / "package.json"
    stamp = prefix / STAMP
    try:
        if json.loads(stamp.read_text()).get("spec") != tool.spec:
            return None
        if json.loads(manifest.read_text()).get("version") != tool.version:
            return None
    except (OSError, ValueError):
        return None
    return binary if os.access(binary, os.X_OK) else None


def _install(tool: NpmTool, prefix: Path) -> str | None:
    """Run `npm install` into `prefix`; the failure's description, or None."""
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    command = ["npm", "install", "--no-audit", "--no-fund", "--no-update-notifier",
               "--prefix", str(prefix), tool.spec]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              cwd=prefix, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(prefix, ignore_errors=True)
        output = (exc.stderr or b"")
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return f"`npm install` took longer than {INSTALL_TIMEOUT:g}s:\n{_tail(text)}"
    except OSError as exc:
        shutil.rmtree(prefix, ignore_errors=True)
        return f"cannot run npm: {exc}"
    if done.returncode != 0:
        shutil.rmtree(prefix, ignore_errors=True)
        return (f"`{' '.join(command)}` exited with {done.returncode}:\n"
                f"{_tail(done.stderr + done.stdout)}")
    (prefix / STAMP).write_text(json.dumps({"spec": tool.spec, "installed": time.time()}))
    if _installed_binary(tool, prefix) is None:
        return (f"npm installed {tool.spec} but node_modules/.bin/{tool.binary} is missing "
                f"or not executable:\n{_tail(done.stderr + done.stdout)}")
    return None


@functools.cache
def ensure(tool: NpmTool) -> Installed:
    """The tool's binary, installed if needed (cached per process)."""
    started = time.monotonic()
    problem = node_problem()
    if problem is not None:
        return Installed(tool, None, problem)
    prefix = CACHE_DIR / tool.slug
    binary = _installed_binary(tool, prefix)
    if binary is not None:
        return Installed(tool, binary, seconds=time.monotonic() - started)
    try:
        with _locked(CACHE_DIR / f"{tool.slug}.lock", LOCK_TIMEOUT):
            # Another process may have finished the install while we waited for the lock.
            binary = _installed_binary(tool, prefix)
            if binary is not None:
                return Installed(tool, binary, seconds=time.monotonic() - started)
            failure = _install(tool, prefix)
    except (OSError, TimeoutError) as exc:
        return Installed(tool, None, f"cannot install into {prefix}: {exc}",
                         time.monotonic() - started)
    elapsed = time.monotonic() - started
    if failure is not None:
        return Installed(tool, None, failure, elapsed, fresh=True)
    return Installed(tool, _installed_binary(tool, prefix), seconds=elapsed, fresh=True)
