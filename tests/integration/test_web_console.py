"""The web console: the login (`stoker web`'s one-time code -> session cookie) over httpx,
and the console itself in a real headless Chromium driven by Playwright: load it, watch a
chat stream live, answer a permission with a click, cancel a turn, open a workspace diff,
read a chat's trace as waterfalls, follow its tasks live and open them, read the stats,
list workflow runs and draw a run's DAG, start one, follow it live, cancel and resume it.

The browser tests use the system's Chromium (Debian's `chromium`; scripts/test installs it
when it can) and skip, saying why, when it or Playwright is missing. On a failure the page
is saved as a screenshot next to the test's temporary directory (the path is printed).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from tests.support.harness import DaemonFactory, DaemonProcess
from tests.support.http_client import CONFIG, HttpDaemon, start_http_daemon


def _login_url(proc: DaemonProcess) -> str:
    result = proc.cli("web", "--json")
    assert result.returncode == 0, result.stderr
    url: str = msgspec.json.decode(result.stdout)["url"]
    assert "/login?code=" in url
    assert proc.cli("token").stdout.strip() not in url
    return url


async def test_login_code_is_one_time_and_the_cookie_is_a_session(
        daemon_factory: DaemonFactory) -> None:
    http = await start_http_daemon(daemon_factory)
    url = _login_url(http.proc)
    path = url[len(http.base):]
    async with http.client() as client:
        first = await client.get(path)
        assert first.status_code == 303
        assert first.headers["location"] == "/"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        # The code works once.
        assert (await client.get(path)).status_code == 401
        # The cookie authenticates the console's requests (with the daemon's own Origin)...
        assert (await client.post("/api/ping", headers={"Origin": http.base})).status_code == 200
        # ...a state-changing request without an Origin is refused (CSRF)...
        client.headers.pop("origin", None)
        assert (await client.post("/api/ping")).status_code == 403
        # ...and the event stream (a GET) needs no Origin.
        assert (await client.get("/api/chats/none/events")).status_code == 404
        # Logging out deletes the cookie from this client.
        out = await client.post("/logout", headers={"Origin": http.base})
        assert out.status_code == 204
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert (await client.post("/api/ping", headers={"Origin": http.base})
                ).status_code == 401
    # Rotating the token ends every session.
    http.proc.cli("token", "--rotate")
    async with http.client() as client:
        session = cookie.split(";", 1)[0]
        response = await client.post("/api/ping", headers={"Cookie": session,
                                                           "Origin": http.base})
        assert response.status_code == 401
    # A made-up code is refused.
    async with httpx.AsyncClient(base_url=http.base) as client:
        assert (await client.get("/login?code=1.2.3")).status_code == 401


# ------------------------------------------------------------------------- the browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextmanager
def _screenshot_on_failure(page: Any, tmp_path: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shot = Path(os.environ.get("STOKER_ARTIFACTS", tmp_path)) / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot saved: {shot}")
        raise


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """One headless Chromium for the module's browser tests (starting one costs seconds);
    each test gets its own context (`browser_page`): cookies and storage are not shared."""
    executable = _chromium()
    if executable is None:
        pytest.skip("no system Chromium (apt-get install chromium; scripts/test does it "
                    "when it can)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev group)")
    # Conditions, not sleeps: each waits as long as a loaded machine may need.
    expect.set_options(timeout=30_000)
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable,
                                        args=["--no-sandbox", "--disable-gpu"])
        except Exception as exc:
            pytest.skip(f"Chromium did not start under Playwright: {exc}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (a new profile: no cookie of an earlier test)."""
    context = chromium_browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def _git_project(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "a.txt").write_text("one\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "init"], check=True)
    return path


def _start(daemon_factory: DaemonFactory) -> HttpDaemon:
    proc = daemon_factory(config=CONFIG)
    proc.start()
    status = msgspec.json.decode(proc.cli("status", "--json").stdout)
    base = status["websocket"].replace("ws://", "http://").rstrip("/")
    return HttpDaemon(proc, base)


def _api(http: HttpDaemon, tag: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{http.base}/api/{tag}", json=body, headers=http.auth, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_actor(http: HttpDaemon, chat: str, predicate: Any, timeout: float = 20.0) -> Any:
    """The chat's actor once `predicate` holds (polled: the browser's request is async)."""
    deadline = time.monotonic() + timeout
    while True:
        actor = _api(http, "inspect", {"chat": chat})["actors"][0]
        if predicate(actor):
            return actor
        assert time.monotonic() < deadline, actor
        time.sleep(0.05)


def test_console_streams_permits_cancels_and_diffs(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:

    page = browser_page
    http = _start(daemon_factory)
    with _screenshot_on_failure(page, tmp_path, "console"):
        _console_session(http, page, tmp_path)


def _console_session(http: HttpDaemon, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Script errors, and anything the Content-Security-Policy blocks, fail the test.
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)

    _api(http, "open_chat", {"chat": "web1", "agent": "echo", "cwd": str(http.proc.work)})
    page.goto(_login_url(http.proc))
    # The login redirected to the console, which lists the chat with its state.
    expect(page.locator("#app")).to_be_visible()
    assert "code=" not in page.url
    item = page.locator('#chats li[data-chat="web1"]')
    expect(item).to_be_visible()
    item.click()
    expect(page.locator("#chat-title")).to_have_text("web1")

    # A turn streams live.
    page.fill("#prompt", "/chunks 6")
    page.press("#prompt", "Enter")
    turn = page.locator('.turn[data-turn="1"]')
    expect(turn.locator(".text")).to_have_text("c0 c1 c2 c3 c4 c5")
    expect(turn.locator(".ended")).to_have_text("ended: end_turn")
    # A turn sent by another client shows up too.
    _api(http, "prompt", {"chat": "web1", "text": "from elsewhere"})
    expect(page.locator('.turn[data-turn="2"] .text')).to_have_text("from elsewhere")

    # What an agent says is text, never markup.
    _api(http, "prompt", {"chat": "web1", "text": "<img src=x onerror=alert(1)><b>b</b>"})
    expect(page.locator('.turn[data-turn="3"] .text')).to_have_text(
        "<img src=x onerror=alert(1)><b>b</b>")
    assert page.locator("#log img, #log b").count() == 0

    # A permission request, answered with a click.
    page.fill("#prompt", "/permission")
    page.press("#prompt", "Enter")
    permission = page.locator('.turn[data-turn="4"] .permission')
    expect(permission).to_be_visible()
    permission.locator('button[data-option="allow"]').click()
    expect(permission).to_have_class("permission answered")
    expect(page.locator('.turn[data-turn="4"] .text')).to_contain_text("permission: allow")

    # Another client answers first: shown answered, by whom, the buttons disabled.
    page.fill("#prompt", "/permission")
    page.press("#prompt", "Enter")
    permission = page.locator('.turn[data-turn="5"] .permission')
    expect(permission).to_be_visible()
    request = permission.get_attribute("data-request")
    assert request
    _api(http, "permit", {"chat": "web1", "request": request, "option": "reject"})
    expect(permission.locator(".answer")).to_have_text("answered: reject by http")
    expect(permission.locator('button[data-option="allow"]')).to_be_disabled()

    # A long turn, cancelled with the button.
    page.fill("#prompt", "/sleep 600000")
    page.press("#prompt", "Enter")
    expect(page.locator('.turn[data-turn="6"].running')).to_be_visible()
    page.click("#cancel")
    expect(page.locator('.turn[data-turn="6"] .ended')).to_have_text("ended: cancelled")

    # The pickers: mode and model, as the agent offers them.
    expect(page.locator("#mode-picker option[value=plan]")).to_be_attached()
    page.select_option("#mode-picker", "plan")
    page.select_option("#model-picker", "echo-2")
    detail = _wait_actor(http, "web1", lambda a: (a["modes"] or {}).get("currentModeId") == "plan"
                         and any(o.get("currentValue") == "echo-2"
                                 for o in a.get("config_options", [])))
    assert detail["agent"] == "echo"

    # The agent's timeline: its starts (and restarts, hibernations) with pid and generation.
    page.click("#timeline-button")
    expect(page.locator("#timeline li").filter(has_text="ready").first).to_contain_text(
        "generation 1")

    # A chat in a workspace: its diff, coloured.
    project = _git_project(tmp_path / "project")
    workspace = _api(http, "workspace_new", {"project": str(project)})
    Path(workspace["path"], "a.txt").write_text("one\ntwo\n")
    Path(workspace["path"], "b.py").write_text('def f():\n    return "two"  # done\n')
    _api(http, "open_chat", {"chat": "web2", "agent": "echo", "workspace":
                             workspace["workspace"]})
    # Keyboard: Alt+L to the chat list, arrows, Enter opens.
    expect(page.locator('#chats li[data-chat="web2"]')).to_be_visible()
    page.keyboard.press("Alt+l")
    expect(page.locator('#chats li[data-chat="web1"]')).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.locator('#chats li[data-chat="web2"]')).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("web2")
    expect(page.locator("#diff-button")).to_be_visible()
    page.click("#diff-button")
    expect(page.locator("#diff .add").filter(has_text="+two")).to_be_visible()
    expect(page.locator("#diff .file").first).to_contain_text("a.txt")
    # With syntax colour.
    expect(page.locator("#diff .tok-keyword").filter(has_text="def")).to_be_visible()
    expect(page.locator("#diff .tok-string").filter(has_text='"two"')).to_be_visible()
    expect(page.locator("#diff .tok-comment").filter(has_text="# done")).to_be_visible()
    assert problems == []

    # Phone-sized: the list is behind the menu button, a chat fills the screen.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(page.locator("#sidebar")).to_be_hidden()
    page.click("#menu")
    expect(page.locator("#sidebar")).to_be_visible()
    page.locator('#chats li[data-chat="web1"]').click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#prompt")).to_be_visible()
    page.set_viewport_size({"width": 1100, "height": 800})

    # Log out: the console says how to log in again, and a reload stays logged out.
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    page.reload()
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()


def test_console_without_a_session_says_how_to_log_in(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "login"):
        _no_session(http, browser_page)


def _no_session(http: HttpDaemon, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(http.base + "/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login")).to_contain_text("stoker web")
    # Phone-sized: the chat list is behind the menu button.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(page.locator("#app")).to_be_hidden()


_DUR = r"(\d+ms|\d+\.\d+s)"
"""A duration as the console writes it (ms under a second)."""


def _open_console(http: HttpDaemon, page: Any, chat: str) -> list[str]:
    """Log in, open `chat` (an echo chat in the daemon's work directory) in the console;
    the script errors and CSP violations seen from then on (the test asserts it empty)."""
    from playwright.sync_api import expect

    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    _api(http, "open_chat", {"chat": chat, "agent": "echo", "cwd": str(http.proc.work)})
    page.goto(_login_url(http.proc))
    page.locator(f'#chats li[data-chat="{chat}"]').click()
    expect(page.locator("#chat-title")).to_have_text(chat)
    return problems


def test_console_traces_turns_as_waterfalls(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "trace"):
        _trace_session(http, browser_page)


def _trace_session(http: HttpDaemon, page: Any) -> None:
    from playwright.sync_api import expect

    problems = _open_console(http, page, "tr1")
    page.fill("#prompt", "/tool")
    page.press("#prompt", "Enter")
    expect(page.locator('.turn[data-turn="1"] .ended')).to_have_text("ended: end_turn")
    tool_id = _api(http, "trace", {"chat": "tr1"})["turns"][0]["tool_calls"][0]["tool_call_id"]

    # Keyboard: Alt+T opens the trace (in place of the log) and focuses it.
    page.keyboard.press("Alt+t")
    expect(page.locator("#trace")).to_be_focused()
    expect(page.locator("#trace-button")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#log")).to_be_hidden()
    turn = page.locator('.trace-turn[data-turn="1"]')
    expect(turn.locator("summary")).to_contain_text("end_turn")
    expect(turn.locator("summary .trace-prompt")).to_have_text("/tool")
    # The turn's bar with its first output marked, the tool call's bar with its status.
    expect(turn.locator(".wf-turn .wf-bar")).to_be_visible()
    expect(turn.locator(".wf-turn .wf-first")).to_have_attribute("title", re.compile(
        rf"^first output {_DUR}$"))
    tool = turn.locator(f'.wf-tool[data-tool="{tool_id}"]')
    expect(tool).to_have_attribute("data-status", "completed")
    expect(tool).to_have_class(re.compile(r"\bstatus-completed\b"))
    expect(tool.locator(".wf-label")).to_have_text("echo tool")
    expect(tool.locator(".wf-dur")).to_have_text(re.compile(rf"^{_DUR} completed$"))
    expect(tool).to_have_attribute("title", re.compile(
        rf"^echo tool \(other\): completed, {_DUR}$"))
    expect(tool.locator(".wf-bar")).to_be_visible()
    # Queued time and tokens, as text.
    expect(turn.locator(".trace-meta")).to_contain_text("queued")
    expect(turn.locator(".trace-meta")).to_contain_text("tokens")

    # Live: turns that start and end while the trace is open appear in it, a turn accepted
    # behind another says so, and a prompt is text, never markup.
    _api(http, "prompt", {"chat": "tr1", "text": "/sleep 300"})
    _api(http, "prompt", {"chat": "tr1", "text": "<img src=x onerror=alert(1)>"})
    queued = page.locator('.trace-turn[data-turn="3"]')
    expect(queued.locator("summary")).to_contain_text("end_turn")
    expect(queued.locator(".trace-prompt")).to_have_text("<img src=x onerror=alert(1)>")
    expect(queued.locator(".trace-meta")).to_contain_text("(behind 1)")
    assert page.locator("#trace img").count() == 0
    # Newest first.
    expect(page.locator(".trace-turn").first).to_have_attribute("data-turn", "3")

    # A running turn: its open tool call shows as it starts, then with its final status.
    _api(http, "prompt", {"chat": "tr1", "text": "/permission"})
    running = page.locator('.trace-turn[data-turn="4"]')
    expect(running.locator("summary .outcome")).to_have_text("running")
    waiting = running.locator(".wf-tool").filter(has_text="echo wants permission")
    expect(waiting).to_have_attribute("data-status", "pending")
    _api(http, "cancel", {"chat": "tr1"})
    expect(running.locator("summary .outcome")).to_have_text("cancelled")
    expect(waiting).to_have_attribute("data-status", "cancelled")
    expect(waiting).to_have_class(re.compile(r"\bstatus-cancelled\b"))

    # A turn can be collapsed from the keyboard (its summary is focusable).
    turn.locator("summary").focus()
    page.keyboard.press("Enter")
    expect(tool).to_be_hidden()
    page.keyboard.press("Enter")
    expect(tool).to_be_visible()

    # Phone-sized: the bars sit under their labels and nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(tool.locator(".wf-bar")).to_be_visible()
    box = tool.locator(".wf-track").bounding_box()
    assert box is not None
    assert box["width"] > 250, box
    assert page.evaluate("(() => { const t = document.getElementById('trace');"
                         " return t.scrollWidth <= t.clientWidth; })()")

    # The button closes it again, back to the log.
    page.click("#trace-button")
    expect(page.locator("#log")).to_be_visible()
    expect(page.locator("#trace")).to_be_hidden()
    assert problems == []


def test_console_shows_a_chats_tasks_live_and_opens_them(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "tasks"):
        _tasks_session(http, browser_page)


def _tasks_session(http: HttpDaemon, page: Any) -> None:
    from playwright.sync_api import expect

    _api(http, "open_chat", {"chat": "other", "agent": "echo", "cwd": str(http.proc.work)})
    problems = _open_console(http, page, "boss")
    expect(page.locator("#tasks")).to_be_hidden()

    # A task created by another client appears live in its parent's view, with its state,
    # agent and title (text, never markup), then its answer once it is done.
    done = _api(http, "task_new", {"parent": "boss", "prompt": "hello tasks",
                                   "agent": "echo", "title": "<b>greet</b>"})["task"]
    row = page.locator(f'#task-list li[data-task="{done}"]')
    expect(row).to_have_attribute("data-state", "done")
    expect(row.locator(".task-state")).to_have_text("done")
    expect(row.locator(".task-agent")).to_have_text("echo")
    expect(row.locator(".task-open")).to_have_text("<b>greet</b>")
    expect(row.locator(".task-note")).to_have_text("hello tasks")
    expect(page.locator(".task-event").filter(has_text="task finished")).to_contain_text(
        "<b>greet</b>")
    # A running one, then cancelled: each change shows as it happens.
    slow = _api(http, "task_new", {"parent": "boss", "prompt": "/sleep 600000",
                                   "agent": "echo", "title": "slow"})["task"]
    slow_row = page.locator(f'#task-list li[data-task="{slow}"]')
    expect(slow_row).to_have_attribute("data-state", "running")
    _api(http, "task_cancel", {"task": slow})
    expect(slow_row).to_have_attribute("data-state", "cancelled")
    assert page.locator("#app b").count() == 0

    # The chat list nests each task under its parent and says whose it is.
    child = page.locator(f'#chats li[data-chat="{done}"]')
    expect(child).to_have_attribute("data-parent", "boss")
    expect(child).to_have_class(re.compile(r"\bdepth-1\b"))
    expect(child.locator(".meta")).to_contain_text("task done of boss")
    expect(page.locator('#chats li[data-chat="boss"] + li')).to_have_attribute(
        "data-chat", done)
    expect(page.locator('#chats li[data-chat="other"]')).not_to_have_attribute(
        "data-parent", re.compile(".*"))

    # Its link opens the task's chat (from the keyboard too), which links back to its parent.
    row.locator(".task-open").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text(done)
    expect(page.locator('.turn[data-turn="1"] .text')).to_have_text("hello tasks")
    expect(page.locator("#parent-link")).to_have_text("task of boss")
    expect(page.locator("#tasks")).to_be_hidden()
    page.click("#parent-link")
    expect(page.locator("#chat-title")).to_have_text("boss")
    # Opened afresh, the parent's view lists its tasks from the daemon.
    expect(page.locator("#task-list li")).to_have_count(2)
    expect(slow_row).to_have_attribute("data-state", "cancelled")
    assert problems == []


def test_console_stats_panel(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "stats"):
        _stats_session(http, browser_page, tmp_path)


def _stats_session(http: HttpDaemon, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    problems = _open_console(http, page, "st1")
    page.fill("#prompt", "/tool")
    page.press("#prompt", "Enter")
    expect(page.locator('.turn[data-turn="1"] .ended')).to_have_text("ended: end_turn")
    # A second chat in a directory whose name is markup (the project key is text).
    odd = tmp_path / "<i>proj"
    odd.mkdir()
    _api(http, "open_chat", {"chat": "st2", "agent": "echo", "cwd": str(odd)})
    _api(http, "prompt", {"chat": "st2", "text": "hi"})
    deadline = time.monotonic() + 30
    while not [t for t in _api(http, "trace", {"chat": "st2"}).get("turns", [])
               if t.get("ended")]:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    page.click("#stats-button")
    expect(page.locator("#stats-button")).to_have_attribute("aria-pressed", "true")
    echo = page.locator('#stats tbody tr[data-key="echo"]')
    expect(echo.locator('[data-field="turns"]')).to_have_text("2")
    expect(echo.locator('[data-field="tool_calls"]')).to_have_text("1")
    expect(echo.locator('[data-field="failed"]')).to_have_text("0")
    expect(echo.locator('[data-field="duration_p50"]')).to_have_text(re.compile(rf"^{_DUR}$"))
    expect(page.locator("#stats-note")).to_contain_text("2 chat(s)")

    # By project: one row per directory, named as text.
    page.select_option("#stats-by", "project")
    expect(page.locator(f'#stats tbody tr[data-key="{http.proc.work}"] [data-field="turns"]')
           ).to_have_text("1")
    expect(page.locator("#stats tbody th").filter(has_text="<i>proj")).to_be_visible()
    assert page.locator("#stats i").count() == 0
    # By day (UTC).
    page.select_option("#stats-by", "day")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    expect(page.locator(f'#stats tbody tr[data-key="{today}"] [data-field="turns"]')
           ).to_have_text("2")

    # Phone-sized: the table scrolls inside its box, the page does not.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(page.locator("#stats")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.click("#stats-button")
    expect(page.locator("#stats")).to_be_hidden()
    assert problems == []


# ------------------------------------------------------------------------- workflows

_SLOW_FLOW = """\
description = "a slow middle step, <b>bold</b> in text only"
agent = "echo"

[inputs]
topic = "x"

[steps.first]
prompt = "first about {{ inputs.topic }}"

[steps.second]
needs = ["first"]
prompt = "/sleep 600000"

[steps.third]
needs = ["second"]
prompt = "third after {{ steps.second.result }}"
"""


def _wait_run(http: HttpDaemon, run: str, timeout: float = 60.0) -> Any:
    """The run once it ended (the daemon's long poll: no sleeping)."""
    deadline = time.monotonic() + timeout
    version = -1
    while True:
        info = _api(http, "workflow", {"run": run, "wait": 5, "version": version})
        if info["state"] != "running":
            return info
        assert time.monotonic() < deadline, info
        version = info["version"]


def test_console_workflows_list_and_dag_with_links_to_the_tasks(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "workflows"):
        _workflows_session(http, browser_page)


def _workflows_session(http: HttpDaemon, page: Any) -> None:
    from playwright.sync_api import expect

    # The worked example of docs/WORKFLOWS.md, run to its end by another client.
    doc = (Path(__file__).parents[2] / "docs" / "WORKFLOWS.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = Path(http.proc.work) / "review.toml"
    path.write_text(example)
    first = _api(http, "workflow_run", {"workflow": str(path), "cwd": str(http.proc.work)})
    done = _wait_run(http, first["run"])
    assert done["state"] == "done", done
    problems = _open_console(http, page, "watcher")

    page.click("#flows-button")
    expect(page.locator("#flows-button")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#chat-view")).to_be_hidden()
    row = page.locator(f'#flow-runs li[data-run="{first["run"]}"]')
    expect(row).to_have_attribute("data-state", "done")
    expect(row.locator(".flow-name")).to_have_text("review")
    expect(row.locator(".flow-steps")).to_have_text("3/3 steps")
    expect(row.locator(".flow-dur")).to_have_text(re.compile(rf"^{_DUR}$"))
    expect(row.locator(".flow-path")).to_have_text(str(path))

    # The run's DAG: each step levelled under what it needs, a fan-out's items under it.
    row.click()
    run = page.locator("#flow-run")
    expect(run).to_have_attribute("data-run", first["run"])
    expect(page.locator("#flow-run-state")).to_have_text("done")
    units = page.locator("#flow-dag li.flow-unit")
    expect(units).to_have_count(6)
    assert units.evaluate_all("(l) => l.map((e) => e.dataset.unit)") == [
        "plan", "review", "review[0]", "review[1]", "review[2]", "summary"]
    margins = units.evaluate_all("(l) => l.map((e) => parseFloat(getComputedStyle(e).marginLeft))")
    assert margins[0] < margins[1] < margins[2] == margins[3] == margins[4]
    assert margins[1] < margins[5] < margins[2]
    summary = page.locator('#flow-dag li[data-unit="summary"]')
    expect(summary).to_have_attribute("data-state", "done")
    expect(summary.locator(".flow-needs")).to_have_text("← review")
    expect(summary.locator(".flow-unit-dur")).to_have_text(re.compile(rf"^{_DUR}$"))
    expect(page.locator('#flow-dag li[data-unit="review[0]"] .flow-label')).to_have_text(
        "review[0] store.py")
    expect(page.locator("#flow-cancel")).to_be_hidden()
    expect(page.locator("#flow-resume")).to_be_hidden()
    expect(page.locator("#flow-run-inputs")).to_have_text(
        'inputs: topic=error handling · files=["store.py","pool.py","hub.py"]')
    summary.locator("summary").click()
    expect(summary.locator(".flow-result pre")).to_contain_text("summarize: review store.py")

    # A step links to its task's chat; the run's chat links back to the run.
    plan_task = next(s["task"] for s in done["steps"] if s["unit"] == "plan")
    page.locator('#flow-dag li[data-unit="plan"] .flow-label').click()
    expect(page.locator("#workflows")).to_be_hidden()
    expect(page.locator("#chat-title")).to_have_text(plan_task)
    expect(page.locator('.turn[data-turn="1"] .text')).to_have_text(
        "plan a review of error handling")
    page.click("#flows-button")
    page.click("#flow-run-chat")
    expect(page.locator("#chat-title")).to_have_text(done["chat"])
    event = page.locator(".flow-event").filter(has_text="summary done")
    expect(event).to_have_count(1)
    page.locator(".flow-event .run-open").last.click()
    expect(page.locator("#workflows")).to_be_visible()
    expect(page.locator("#flow-run")).to_have_attribute("data-run", first["run"])
    # The address names the run: a reload (or the link elsewhere) opens it again.
    assert page.url.endswith(f"#workflows/{first['run']}")
    page.reload()
    expect(page.locator("#workflows")).to_be_visible()
    expect(page.locator("#flow-run")).to_have_attribute("data-run", first["run"])
    expect(units).to_have_count(6)

    # A failed run says why, offers Resume (not Cancel), and marks what it skipped.
    failing = Path(http.proc.work) / "failing.toml"
    failing.write_text('agent = "echo"\n[steps.stuck]\nprompt = "/sleep 600000"\n'
                       'timeout = 1\n[steps.after]\nneeds = ["stuck"]\nprompt = "x"\n')
    failed = _wait_run(http, _api(http, "workflow_run", {"workflow": str(failing)})["run"])
    assert failed["state"] == "failed", failed
    failed_row = page.locator(f'#flow-runs li[data-run="{failed["run"]}"]')
    expect(failed_row).to_have_attribute("data-state", "failed")
    expect(failed_row.locator(".flow-steps")).to_have_text("0/2 steps")
    failed_row.click()
    expect(page.locator("#flow-run-reason")).to_have_text(failed["reason"])
    expect(page.locator("#flow-resume")).to_be_visible()
    expect(page.locator("#flow-cancel")).to_be_hidden()
    stuck = page.locator('#flow-dag li[data-unit="stuck"]')
    expect(stuck).to_have_attribute("data-state", "failed")
    expect(stuck.locator(".flow-error")).to_contain_text("timed out")
    expect(page.locator('#flow-dag li[data-unit="after"]')).to_have_attribute(
        "data-state", "skipped")
    expect(page.locator('#flow-runs li[data-run]')).to_have_count(2)
    row.click()

    # Phone-sized: the panel fits the screen.
    page.set_viewport_size({"width": 390, "height": 800})
    expect(page.locator("#flow-dag")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert problems == []


def test_console_starts_follows_cancels_and_resumes_a_workflow_run(
        daemon_factory: DaemonFactory, browser_page: Any, tmp_path: Path) -> None:
    http = _start(daemon_factory)
    with _screenshot_on_failure(browser_page, tmp_path, "workflow-run"):
        _workflow_run_session(http, browser_page)


def _workflow_run_session(http: HttpDaemon, page: Any) -> None:
    from playwright.sync_api import expect

    project = Path(http.proc.work) / "proj"
    (project / ".stoker" / "workflows").mkdir(parents=True)
    (project / ".git").mkdir()  # discovery stops at the project's root
    flow = project / ".stoker" / "workflows" / "slow.toml"
    flow.write_text(_SLOW_FLOW)
    (project / ".stoker" / "workflows" / "broken.toml").write_text(
        'agent = "echo"\n[steps.a]\nneeds = ["zz"]\nprompt = "x"\n')
    problems = _open_console(http, page, "starter")
    page.keyboard.press("Alt+w")
    expect(page.locator("#flows-button")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#flow-runs")).to_contain_text("No runs yet.")

    # Find the project's workflows; each says what it is, or why it would not run.
    page.click("#flows-new")
    page.fill("#flow-cwd", str(project))
    page.click("#flow-find")
    expect(page.locator("#flow-pick option")).to_have_count(2)
    page.select_option("#flow-pick", str(flow))
    expect(page.locator("#flow-about")).to_contain_text("<b>bold</b> in text only")
    page.select_option("#flow-pick", label="broken (does not validate)")
    expect(page.locator("#flow-about .flow-file-error")).to_contain_text("zz")

    # A bad input is refused, saying why, and starts nothing.
    page.select_option("#flow-pick", str(flow))
    page.fill("#flow-inputs", "nosuch=1")
    page.click("#flow-go")
    expect(page.locator("#flow-problem")).to_contain_text("unknown input 'nosuch'")
    # (The browser logs the refused request: that error is expected.)
    assert problems == ["console error: Failed to load resource: the server responded with "
                        "a status of 400 ()"]
    problems.clear()
    assert _api(http, "workflows", {}).get("runs", []) == []

    # Started from the console: its view opens and follows the run live.
    page.fill("#flow-inputs", "topic=<i>t</i>")
    page.click("#flow-go")
    expect(page.locator("#flow-start")).to_be_hidden()
    second = page.locator('#flow-dag li[data-unit="second"]')
    expect(second).to_have_attribute("data-state", "running")
    expect(page.locator('#flow-dag li[data-unit="first"]')).to_have_attribute("data-state", "done")
    expect(page.locator('#flow-dag li[data-unit="third"]')).to_have_attribute(
        "data-state", "waiting")
    expect(page.locator("#flow-run-state")).to_have_text("running")
    runs = _api(http, "workflows", {})["runs"]
    assert len(runs) == 1
    assert runs[0]["inputs"] == {"topic": "<i>t</i>"}
    run = runs[0]["run"]
    assert runs[0]["cwd"] == str(project)
    expect(page.locator(f'#flow-runs li[data-run="{run}"] .flow-steps')).to_have_text(
        "1/3 steps")
    expect(page.locator("#flow-run-inputs")).to_have_text("inputs: topic=<i>t</i>")
    expect(page.locator("#flow-run-origin")).to_be_hidden()  # a client started it
    page.locator('#flow-dag li[data-unit="first"] .flow-result summary').click()
    expect(page.locator('#flow-dag li[data-unit="first"] .flow-result pre')).to_have_text(
        "first about <i>t</i>")

    # Cancel, then resume: the running step is cancelled, then runs again.
    page.click("#flow-cancel")
    expect(page.locator("#flow-run-state")).to_have_text("cancelled")
    expect(second).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#flow-cancel")).to_be_hidden()
    # An opened result stays open across the redraws of the run's changes.
    expect(page.locator('#flow-dag li[data-unit="first"] .flow-result pre')).to_be_visible()
    assert _api(http, "workflow", {"run": run})["state"] == "cancelled"
    page.click("#flow-resume")
    expect(page.locator("#flow-run-state")).to_have_text("running")
    expect(second).to_have_attribute("data-state", "running")
    expect(page.locator('#flow-dag li[data-unit="first"]')).to_have_attribute("data-state", "done")
    # A change made by another client shows too (the view follows the run).
    _api(http, "workflow_cancel", {"run": run})
    expect(page.locator("#flow-run-state")).to_have_text("cancelled")
    expect(page.locator(f'#flow-runs li[data-run="{run}"]')).to_have_attribute(
        "data-state", "cancelled")
    assert page.locator("#workflows b, #workflows i").count() == 0
    assert problems == []
