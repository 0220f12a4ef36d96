// The Stoker web console: plain JavaScript, no build step. Requests go to POST /api/<type>
// (the same requests as the socket's), a chat's deltas come as Server-Sent Events from
// GET /api/chats/<chat>/events. Everything the agent says is inserted as text, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY = 5000;
const TRACE_TURNS = 20;
const state = {
  chat: null, source: null, chats: [], agents: [], turns: new Map(), tools: new Map(),
  perms: new Map(), timeline: [], summary: null, traceClosed: new Set(),
  tasks: new Map(), allTasks: new Map(),
  flows: { details: new Map(), current: null, follow: null, timer: null, available: [],
    openResults: new Set() },
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function api(type, body = {}, signal = undefined) {
  const response = await fetch(`/api/${type}`, {
    method: "POST", credentials: "same-origin", signal,
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data = {};
  try { data = await response.json(); } catch (_) { /* empty body */ }
  if (response.status === 401) { showLogin(); }
  if (!response.ok) {
    const error = new Error(data.message || response.statusText);
    error.code = data.code;
    throw error;
  }
  return data;
}

function showLogin() {
  $("login").hidden = false;
  $("app").hidden = true;
}

// ------------------------------------------------------------------ chat list

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  return n > 1 << 20 ? `${(n / (1 << 20)).toFixed(0)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
}

function fmtIdle(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `idle ${s.toFixed(0)}s`;
  if (s < 3600) return `idle ${(s / 60).toFixed(0)}m`;
  return `idle ${(s / 3600).toFixed(1)}h`;
}

async function refreshChats() {
  let tasks = null;
  try {
    const [list, all] = await Promise.all([
      api("ls"), api("tasks", {}).catch(() => null)]);  // tasks: none from an older daemon
    state.chats = list.chats;
    tasks = all;
  } catch (error) {
    if (error.code !== "unauthorized") showError(error.message);
    return;
  }
  state.allTasks = new Map(((tasks && tasks.tasks) || []).map((t) => [t.task, t]));
  const ul = $("chats");
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.chat : null;
  ul.replaceChildren();
  for (const [chat, depth] of chatTree(state.chats, state.allTasks)) {
    const task = state.allTasks.get(chat.chat);
    const li = el("li", task ? `task-chat depth-${Math.min(depth, 4)}` : null);
    li.tabIndex = 0;
    li.dataset.chat = chat.chat;
    if (task) li.dataset.parent = task.parent;
    if (chat.chat === state.chat) li.classList.add("current");
    const name = el("div", "name");
    if (task) name.append(el("span", "task-mark", "↳ "));
    name.append(chat.title || (task && task.title) || chat.chat);
    const meta = el("div", "meta");
    const st = el("span", `state-${chat.state}`, chat.state);
    st.dataset.role = "state";
    meta.append(`${chat.agent} · `, st,
      chat.pid ? ` · pid ${chat.pid}` : "", chat.rss ? ` · ${fmtBytes(chat.rss)}` : "",
      chat.idle !== undefined && chat.idle !== null ? ` · ${fmtIdle(chat.idle)}` : "",
      ` · ${chat.turns || 0} turns`, chat.queued ? ` · ${chat.queued} queued` : "");
    if (task) meta.append(` · task ${task.state} of ${task.parent}`);
    li.append(name, meta);
    li.addEventListener("click", () => selectChat(chat.chat));
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter") selectChat(chat.chat);
      if (event.key === "ArrowDown" && li.nextSibling) li.nextSibling.focus();
      if (event.key === "ArrowUp" && li.previousSibling) li.previousSibling.focus();
    });
    ul.append(li);
    if (chat.chat === focused) li.focus();
    if (chat.chat === state.chat) {
      state.summary = chat;
      $("chat-state").textContent = chat.state;
      $("chat-state").className = `badge state-${chat.state}`;
      $("diff-button").hidden = !chat.workspace;
    }
  }
}

function chatTree(chats, tasks) {
  // [chat, depth] in list order, each task right under its parent (when the parent is
  // listed; else where it is, marked as a task all the same).
  const listed = new Set(chats.map((c) => c.chat));
  const children = new Map();
  for (const chat of chats) {
    const task = tasks.get(chat.chat);
    if (task && listed.has(task.parent) && task.parent !== chat.chat) {
      if (!children.has(task.parent)) children.set(task.parent, []);
      children.get(task.parent).push(chat);
    }
  }
  const out = [];
  const seen = new Set();
  const visit = (chat, depth) => {
    if (seen.has(chat.chat)) return;
    seen.add(chat.chat);
    out.push([chat, depth]);
    for (const child of children.get(chat.chat) || []) visit(child, depth + 1);
  };
  for (const chat of chats) {
    const task = tasks.get(chat.chat);
    if (!task || !listed.has(task.parent)) visit(chat, task ? 1 : 0);
  }
  for (const chat of chats) visit(chat, 1);  // a cycle, should the daemon ever report one
  return out;
}

// ------------------------------------------------------------------ one chat

function closeStream() {
  if (state.source) state.source.close();
  state.source = null;
}

async function selectChat(chat) {
  showWorkflows(false);
  closeStream();
  state.chat = chat;
  state.turns = new Map(); state.tools = new Map(); state.perms = new Map();
  state.timeline = []; state.traceClosed = new Set(); state.tasks = new Map();
  $("log").replaceChildren(); renderTasks();
  $("parent-link").hidden = true;
  $("diff").hidden = true; $("timeline").hidden = true; $("usage").textContent = "";
  $("empty").hidden = true; $("chat-view").hidden = false;
  $("chat-title").textContent = chat;
  $("app").classList.remove("show-list");
  for (const li of $("chats").children) li.classList.toggle("current", li.dataset.chat === chat);
  history.replaceState(null, "", `#${encodeURIComponent(chat)}`);
  // The last HISTORY events, not the whole retained log (which may be 100k deltas).
  let since = 0;
  try {
    const detail = await api("inspect", { chat });
    since = Math.max(0, detail.chat.head_seq - HISTORY);
    if (detail.parent && state.chat === chat) {
      const link = $("parent-link");
      link.textContent = `task of ${detail.parent}`;
      link.href = `#${encodeURIComponent(detail.parent)}`;
      link.dataset.chat = detail.parent;
      link.hidden = false;
    }
  } catch (error) { showError(error.message); }
  if (state.chat !== chat) return;  // another chat was picked meanwhile
  if (since > 0) $("log").append(el("div", "muted", `${since} earlier events not shown`));
  const source = new EventSource(`/api/chats/${encodeURIComponent(chat)}/events?since=${since}`);
  state.source = source;
  const on = (name, fn) => source.addEventListener(name, (event) => {
    if (state.source !== source) return;
    fn(JSON.parse(event.data));
  });
  let epoch = null;
  on("subscribed", (msg) => {
    // A reconnect (EventSource resumes by Last-Event-ID) into another history of the
    // chat (the daemon crashed meanwhile): its seq numbers mean other deltas. Start over.
    if (epoch !== null && msg.epoch !== epoch) { selectChat(chat); return; }
    epoch = msg.epoch;
  });
  state.replaying = true;
  on("replay_complete", () => { state.replaying = false; loadPickers(); loadTasks(); });
  on("delta", renderDelta);
  on("resync_required", (msg) => { $("log").replaceChildren(); state.turns.clear();
    renderNotice("info", `history restarted (${msg.reason})`); renderSnapshot(msg.snapshot); });
  on("lagged", (msg) => renderNotice("info", `catching up ${msg.missed} events`));
  on("goodbye", (msg) => renderNotice("warning", `daemon: ${msg.reason}`));
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) renderNotice("error", "stream closed"); };
  refreshChats();
  if (traceShown()) showTrace(true);
}

function renderSnapshot(snapshot) {
  for (const permission of snapshot.pending_permissions || []) {
    renderPermission({ request: permission.request, tool_call: permission.tool_call,
      options: permission.options }, turnBox(snapshot.turn || 0));
  }
}

function turnBox(turn) {
  let box = state.turns.get(turn);
  if (!box) {
    box = el("div", "turn");
    box.dataset.turn = turn;
    state.turns.set(turn, box);
    $("log").append(box);
  }
  return box;
}

function appendText(box, cls, text) {
  let last = box.lastElementChild;
  if (cls === "reasoning") {
    if (!last || !last.classList.contains("reasoning-box")) {
      last = el("details", "reasoning-box");
      last.append(el("summary", null, "thinking"), el("div", "reasoning"));
      box.append(last);
    }
    last.lastElementChild.textContent += text;
    return;
  }
  if (!last || !last.classList.contains(cls)) {
    last = el("div", cls);
    box.append(last);
  }
  last.textContent += text;
}

function scrollDown() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function renderNotice(level, message) {
  $("log").append(el("div", level === "error" ? "error" : "notice", message));
}

function renderDelta(delta) {
  const body = delta.body;
  const box = delta.turn ? turnBox(delta.turn) : null;
  switch (body.kind) {
    case "turn_started": {
      const b = turnBox(delta.turn);
      b.classList.add("running");
      b.append(el("div", "user", `› ${body.prompt}`));
      if (!state.replaying) loadTrace();
      break;
    }
    case "text": appendText(box || turnBox(0), "text", body.text); break;
    case "reasoning": appendText(box || turnBox(0), "reasoning", body.text); break;
    case "tool_call": {
      const details = el("details", "tool");
      const summary = el("summary", null, body.title || body.tool_call_id);
      const status = el("span", "status", body.status);
      summary.append(status);
      details.append(summary, el("pre", "tool-body", JSON.stringify(body.acp || {}, null, 2)));
      (box || turnBox(0)).append(details);
      state.tools.set(body.tool_call_id, { details, status, started: delta.ts });
      if (!state.replaying) loadTrace();
      break;
    }
    case "tool_update": {
      const tool = state.tools.get(body.tool_call_id);
      if (!tool) break;
      if (body.status) {
        let text = body.status;
        if (body.status === "completed" || body.status === "failed") {
          text += ` · ${(delta.ts - tool.started).toFixed(1)}s`;
        }
        tool.status.textContent = text;
        if (!state.replaying) loadTrace();
      }
      tool.details.lastElementChild.textContent += "\n" + JSON.stringify(body.acp || {}, null, 2);
      break;
    }
    case "plan": {
      const target = box || turnBox(0);
      let plan = target.querySelector(".plan");
      if (!plan) { plan = el("div", "plan"); target.append(plan); }
      const ol = el("ol");
      for (const entry of body.entries) ol.append(el("li", entry.status || "", entry.content));
      plan.replaceChildren(el("strong", null, "plan"), ol);
      break;
    }
    case "usage": {
      const parts = [];
      if (body.used !== undefined) parts.push(`context ${body.used}${body.size ? "/" + body.size : ""}`);
      if (body.input_tokens !== undefined) parts.push(`in ${body.input_tokens}`);
      if (body.output_tokens !== undefined) parts.push(`out ${body.output_tokens}`);
      if (body.cost) parts.push(`cost ${body.cost.amount} ${body.cost.currency || ""}`);
      $("usage").textContent = parts.join(" · ");
      break;
    }
    case "permission_request": renderPermission(body, box || turnBox(0)); break;
    case "permission_resolved": {
      const node = state.perms.get(body.request);
      if (node) {
        node.classList.add("answered");
        for (const button of node.querySelectorAll("button")) button.disabled = true;
        node.append(el("div", "answer", body.outcome === "selected"
          ? `answered: ${body.option} by ${body.by || "?"}` : `cancelled${body.by ? " by " + body.by : ""}`));
      }
      break;
    }
    case "status":
      state.timeline.push(delta);
      $("chat-state").textContent = body.state;
      $("chat-state").className = `badge state-${body.state}`;
      if ($("timeline").hidden === false) renderTimeline();
      if (body.state === "ready" && !state.replaying) loadPickers();  // modes, models now known
      break;
    case "notice": renderNotice(body.level, body.message); break;
    case "mode": setOptions($("mode-picker"), body.available.map((m) => [m.id, m.name || m.id]), body.mode); break;
    case "config": setModelOption(body.options); break;
    case "diff": $("diff-button").hidden = false; break;
    case "task": {
      applyTask(body);
      const line = el("div", "task-event");
      line.append(`task ${body.event}: `, taskLink(body.task, body.title || body.task),
        ` (${body.agent})`, body.error ? `: ${body.error}` : body.summary ? `: ${body.summary}` : "");
      $("log").append(line);
      if (!state.replaying) {
        loadTasks();
        if (body.event === "spawned") refreshChats();  // its chat, nested in the list
      }
      break;
    }
    case "workflow": {
      const line = el("div", "task-event flow-event");
      line.append("workflow ", runLink(body.run, `run ${body.run}`),
        body.unit ? `: ${body.unit} ${body.state}` : `: ${body.state}`,
        body.error ? `: ${body.error}` : "");
      $("log").append(line);
      break;
    }
    case "turn_ended": {
      const b = turnBox(delta.turn);
      b.classList.remove("running");
      b.append(el("div", "ended", body.error ? `ended: ${body.error}` : `ended: ${body.stop_reason}`));
      if (!state.replaying) loadTrace();
      break;
    }
    default: break;
  }
  scrollDown();
}

function renderPermission(body, box) {
  const node = el("div", "permission");
  node.dataset.request = body.request;
  const title = (body.tool_call && (body.tool_call.title || body.tool_call.toolCallId)) || "a tool call";
  node.append(el("div", null, `Permission: ${title}`));
  for (const option of body.options || []) {
    const button = el("button", null, option.name || option.optionId);
    button.dataset.option = option.optionId;
    button.addEventListener("click", async () => {
      try {
        await api("permit", { chat: state.chat, request: body.request, option: option.optionId });
      } catch (error) {
        showError(error.code === "already_answered" ? "another client answered first" : error.message);
      }
    });
    node.append(button);
  }
  state.perms.set(body.request, node);
  box.append(node);
}

function setOptions(select, pairs, current) {
  select.replaceChildren();
  for (const [value, label] of pairs) {
    const option = el("option", null, label);
    option.value = value;
    if (value === current) option.selected = true;
    select.append(option);
  }
  if (select.parentElement.tagName === "LABEL") select.parentElement.hidden = pairs.length === 0;
}

async function loadPickers() {
  const chat = state.chat;
  setOptions($("agent-picker"), state.agents.map((a) => [a.name, a.name]), null);
  try {
    const detail = await api("inspect", { chat });
    if (chat !== state.chat) return;
    setOptions($("agent-picker"), state.agents.map((a) => [a.name, a.name]), detail.chat.agent);
    $("diff-button").hidden = !detail.chat.workspace;
    const actor = detail.actors.find((a) => a.agent === detail.chat.agent) || detail.actors[0];
    const modes = actor && actor.modes ? actor.modes : null;
    setOptions($("mode-picker"), modes ? (modes.availableModes || []).map((m) => [m.id, m.name || m.id]) : [],
      modes ? modes.currentModeId : null);
    setModelOption(actor ? actor.config_options || [] : []);
  } catch (error) { showError(error.message); }
}

function setModelOption(options) {
  const model = options.find((o) => o.category === "model" || o.id === "model");
  state.modelOption = model ? model.id : null;
  setOptions($("model-picker"), model ? (model.options || []).map((o) => [o.value, o.name || o.value]) : [],
    model ? model.currentValue : null);
}

function renderTimeline() {
  const box = $("timeline");
  const ol = el("ol");
  for (const delta of state.timeline) {
    const b = delta.body;
    const when = new Date(delta.ts * 1000).toLocaleTimeString();
    ol.append(el("li", `state-${b.state}`,
      `${when} ${b.agent} ${b.state}${b.pid ? " pid " + b.pid : ""} (generation ${b.generation})${b.reason ? ": " + b.reason : ""}`));
  }
  box.replaceChildren(el("strong", null, "agent timeline"), ol);
}

const KEYWORDS = new Set(("if else elif for while return def class function const let var " +
  "import from export async await try except catch finally raise throw new with as in of " +
  "not and or is None True False null true false undefined fn pub struct impl use match " +
  "type interface package func go defer select case switch break continue yield lambda").split(" "));
const TOKENS = /(#.*$|\/\/.*$|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`|\b\d[\d_.]*\b|\b[A-Za-z_][A-Za-z0-9_]*\b)/g;

function highlight(parent, code) {
  // A small, language-agnostic colouring: comments, strings, numbers, keywords. Text
  // nodes only: the patch is never parsed as HTML.
  let last = 0;
  for (const match of code.matchAll(TOKENS)) {
    const token = match[0];
    let cls = null;
    if (token.startsWith("#") || token.startsWith("//")) cls = "tok-comment";
    else if (/^["'`]/.test(token)) cls = "tok-string";
    else if (/^\d/.test(token)) cls = "tok-number";
    else if (KEYWORDS.has(token)) cls = "tok-keyword";
    if (!cls) continue;
    parent.append(code.slice(last, match.index), el("span", cls, token));
    last = match.index + token.length;
  }
  parent.append(code.slice(last));
}

async function showDiff() {
  const summary = state.chats.find((c) => c.chat === state.chat);
  const workspace = summary && summary.workspace;
  if (!workspace) return;
  const box = $("diff");
  try {
    const diff = await api("workspace_diff", { workspace, patch: true });
    const pre = el("pre");
    for (const line of (diff.patch || "").split("\n")) {
      let cls = null;
      if (line.startsWith("diff --git") || line.startsWith("+++") || line.startsWith("---")) cls = "file";
      else if (line.startsWith("@@")) cls = "hunk";
      else if (line.startsWith("+")) cls = "add";
      else if (line.startsWith("-")) cls = "del";
      const span = el("span", cls);
      if (cls === "add" || cls === "del" || cls === null) {
        span.append(line.slice(0, 1));
        highlight(span, line.slice(1));
        span.append("\n");
      } else {
        span.textContent = line + "\n";
      }
      pre.append(span);
    }
    box.replaceChildren(el("div", "muted", diff.summary || `${diff.files.length} files`), pre);
    box.hidden = false;
  } catch (error) { showError(error.message); }
}

// ------------------------------------------------------------------ tasks

function taskLink(task, text) {
  // A link that opens the task's chat (a plain #chat link: a new tab opens it too).
  const link = el("a", "task-open", text);
  link.href = `#${encodeURIComponent(task)}`;
  link.dataset.chat = task;
  link.addEventListener("click", (event) => { event.preventDefault(); selectChat(task); });
  return link;
}

function applyTask(info) {
  const old = state.tasks.get(info.task) || {};
  state.tasks.set(info.task, { ...old, ...info });
  renderTasks();
}

async function loadTasks() {
  const chat = state.chat;
  if (!chat) return;
  try {
    const list = await api("tasks", { parent: chat });
    if (chat !== state.chat) return;
    for (const info of list.tasks || []) applyTask(info);
  } catch (error) {
    if (error.code !== "unknown_request") showError(error.message);
  }
}

function renderTasks() {
  const ul = $("task-list");
  ul.replaceChildren();
  for (const task of state.tasks.values()) {
    const li = el("li", "task");
    li.dataset.task = task.task;
    li.dataset.state = task.state || "";
    const badge = el("span", `badge task-state task-${cssName(task.state)}`, task.state || "?");
    li.append(badge, el("span", "task-agent", task.agent || ""),
      taskLink(task.task, task.title || task.task));
    const note = task.error || task.summary || task.result || "";
    if (note) li.append(el("div", "task-note", note));
    ul.append(li);
  }
  $("tasks").hidden = state.tasks.size === 0;
}

// ------------------------------------------------------------------ trace

function fmtDur(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 1) return `${Math.round(s * 1000)}ms`;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.round(s - m * 60)).padStart(2, "0")}s`;
}

function fmtNum(n) {
  return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US");
}

function cssName(value) {
  // A class-name suffix from a daemon-given word (a status, an outcome).
  return String(value || "none").toLowerCase().replace(/[^a-z0-9_-]/g, "_");
}

function traceShown() { return !$("trace").hidden; }

function showTrace(on) {
  $("trace").hidden = !on;
  $("log").hidden = on;
  $("trace-button").setAttribute("aria-pressed", String(on));
  if (on) { $("trace").replaceChildren(el("div", "muted", "loading…")); loadTrace(); }
  else scrollDown();
}

async function loadTrace() {
  // One request at a time; a change meanwhile asks for one more when it is answered.
  if (!state.chat || !traceShown()) return;
  if (state.traceLoading) { state.traceAgain = true; return; }
  state.traceLoading = true;
  const chat = state.chat;
  try {
    const result = await api("trace", { chat, last: TRACE_TURNS });
    if (chat === state.chat && traceShown()) renderTrace(result);
  } catch (error) {
    showError(error.message);
  } finally {
    state.traceLoading = false;
    if (state.traceAgain) { state.traceAgain = false; loadTrace(); }
  }
}

function renderTrace(result) {
  const nodes = [];
  const turns = result.turns || [];
  if (!turns.length) nodes.push(el("div", "muted", "No turns yet."));
  if (turns.length >= TRACE_TURNS) {
    nodes.push(el("div", "muted", `the last ${TRACE_TURNS} turns, newest first (stoker trace shows any turn)`));
  }
  if (result.truncated) nodes.push(el("div", "muted", "The log no longer holds the start of older turns."));
  for (const turn of [...turns].reverse()) nodes.push(traceTurn(turn));
  $("trace").replaceChildren(...nodes);
}

function traceTurn(t) {
  // One turn as a waterfall: its bar from when it could run to its end, the first output
  // marked on it, then one bar per tool call on the same time axis. Text only.
  // Fields at their default are left out of the daemon's JSON.
  const calls = t.tool_calls || [];
  const start = t.started || t.accepted || 0;
  const accepted = t.accepted || start;
  const running = t.ended === null || t.ended === undefined;
  let end = t.ended;
  if (running) {
    end = Math.max(Date.now() / 1000, start, t.first_output || 0,
      ...calls.map((c) => c.end || c.start || 0));
  }
  const total = Math.max(end - start, 1e-6);
  const at = (time) => Math.min(100, Math.max(0, ((time - start) / total) * 100));
  const outcome = running ? "running" : (t.outcome || "?");

  const details = el("details", "trace-turn");
  details.dataset.turn = t.turn;
  details.open = !state.traceClosed.has(t.turn);
  details.addEventListener("toggle", () => {
    if (details.open) state.traceClosed.delete(t.turn); else state.traceClosed.add(t.turn);
  });
  const summary = el("summary");
  summary.append(el("strong", null, `turn ${t.turn}`), el("span", null, t.agent || ""),
    el("span", null, fmtDur(end - start)), el("span", `outcome outcome-${cssName(outcome)}`, outcome),
    el("span", "trace-prompt", t.prompt || ""));
  details.append(summary);

  const meta = [];
  meta.push(t.first_output ? `first output ${fmtDur(t.first_output - start)}` : "no output");
  meta.push(`queued ${fmtDur(Math.max(0, start - accepted))}${t.queued ? ` (behind ${t.queued})` : ""}`);
  if (t.input_tokens !== null && t.input_tokens !== undefined
      || t.output_tokens !== null && t.output_tokens !== undefined) {
    meta.push(`tokens ${fmtNum(t.input_tokens)} in / ${fmtNum(t.output_tokens)} out` +
      (t.cached_tokens ? ` (${fmtNum(t.cached_tokens)} cached)` : ""));
  } else {
    meta.push("tokens not reported");
  }
  if (t.cost !== null && t.cost !== undefined) meta.push(`cost ${t.cost} ${t.cost_currency || ""}`.trim());
  if (t.restarts) meta.push(`${t.restarts} restart${t.restarts === 1 ? "" : "s"}`);
  details.append(el("div", "trace-meta", meta.join(" · ")));
  if (t.error) details.append(el("div", "error", t.error));

  const list = el("ol", "wf");
  const row = (cls, label, duration, tip) => {
    const li = el("li", `wf-row ${cls}`);
    const track = el("span", "wf-track");
    track.setAttribute("aria-hidden", "true");
    li.append(el("span", "wf-label", label), track, el("span", "wf-dur", duration));
    li.title = tip;
    list.append(li);
    return { li, track };
  };
  const bar = (track, from, to) => {
    const node = el("span", "wf-bar");
    node.style.left = `${at(from).toFixed(2)}%`;
    node.style.width = `${Math.max(0, at(to) - at(from)).toFixed(2)}%`;
    track.append(node);
    return node;
  };
  const axis = el("li", "wf-row wf-axis");
  axis.setAttribute("aria-hidden", "true");
  const ticks = el("span", "wf-track");
  ticks.append(el("span", null, "0"), el("span", null, fmtDur(total / 2)), el("span", null, fmtDur(total)));
  axis.append(el("span", "wf-label"), ticks, el("span", "wf-dur"));
  list.append(axis);

  const turnRow = row(`wf-turn outcome-${cssName(outcome)}`, "turn", `${fmtDur(total)} ${outcome}`,
    `turn ${t.turn}: ${fmtDur(total)}, ${outcome}`);
  bar(turnRow.track, start, end);
  if (t.first_output) {
    const mark = el("span", "wf-first");
    mark.style.left = `${at(t.first_output).toFixed(2)}%`;
    mark.title = `first output ${fmtDur(t.first_output - start)}`;
    turnRow.track.append(mark);
  }
  for (const call of calls) {
    const closed = call.end !== null && call.end !== undefined;
    const from = call.start || start;
    const to = closed ? call.end : end;
    const status = closed || running ? call.status || "pending" : "never closed";
    const name = call.title || call.tool_call_id;
    const { li, track } = row(`wf-tool status-${cssName(closed || running ? status : "unclosed")}`,
      name, `${fmtDur(to - from)} ${status}`,
      `${name}${call.kind ? ` (${call.kind})` : ""}: ${status}, ${fmtDur(to - from)}`);
    li.dataset.tool = call.tool_call_id;
    li.dataset.status = status;
    bar(track, from, to);
  }
  details.append(list);
  return details;
}

// ------------------------------------------------------------------ stats

const STATS_COLUMNS = [
  ["key", "", (r) => r.key],
  ["turns", "turns", (r) => r.turns || 0],
  ["failed", "failed", (r) => r.failed || 0],
  ["cancelled", "cancelled", (r) => r.cancelled || 0],
  ["duration_p50", "p50", (r) => fmtDur(r.duration_p50)],
  ["duration_p95", "p95", (r) => fmtDur(r.duration_p95)],
  ["ttft_p50", "first output p50", (r) => fmtDur(r.ttft_p50)],
  ["ttft_p95", "first output p95", (r) => fmtDur(r.ttft_p95)],
  ["tool_calls", "tools", (r) => r.tool_calls || 0],
  ["input_tokens", "tokens in", (r) => fmtNum(r.input_tokens || 0)],
  ["output_tokens", "tokens out", (r) => fmtNum(r.output_tokens || 0)],
  ["cost", "cost", (r) => (r.cost ? String(r.cost) : "")],
  ["restarts", "restarts", (r) => r.restarts || 0],
  ["hibernations", "hibernated", (r) => r.hibernations || 0],
];

async function loadStats() {
  const by = $("stats-by").value;
  const since = Date.now() / 1000 - Number($("stats-since").value);
  try {
    const result = await api("stats", { by, since });
    if ($("stats").hidden) return;
    renderStats(result);
  } catch (error) { showError(error.message); }
}

function renderStats(result) {
  const label = { agent: "agent", project: "project", day: "day (UTC)" }[result.by] || result.by;
  $("stats-note").textContent =
    `since ${new Date(result.since * 1000).toLocaleString()}, ${result.chats || 0} chat(s)`;
  const rows = result.rows || [];
  if (!rows.length) {
    $("stats-table").replaceChildren(el("div", "muted", "No turns in this period."));
    return;
  }
  const table = el("table");
  const head = el("tr");
  for (const [field, title] of STATS_COLUMNS) {
    const th = el("th", null, field === "key" ? label : title);
    th.scope = "col";
    head.append(th);
  }
  table.append(el("thead"), el("tbody"));
  table.tHead.append(head);
  for (const r of rows) {
    const tr = el("tr");
    tr.dataset.key = r.key;
    for (const [field, , value] of STATS_COLUMNS) {
      const cell = el(field === "key" ? "th" : "td", null, value(r));
      if (field === "key") cell.scope = "row";
      cell.dataset.field = field;
      tr.append(cell);
    }
    table.tBodies[0].append(tr);
  }
  $("stats-table").replaceChildren(table);
}

// ------------------------------------------------------------------ workflows

// A run's list row and its DAG come from `workflows` (the runs) and `workflow` (one run
// with its steps). The open run is followed by long polls: `workflow` with `wait` and the
// version last seen answers at the run's next change (as `stoker workflow show --follow`).
const FLOW_WAIT = 25;
const FLOW_DETAILS = 30;  // the newest runs whose steps the list counts
const FLOW_MARK = {
  done: "✓", cached: "≡", running: "▶", pending: "◌", waiting: "○", failed: "✗",
  cancelled: "⊘", skipped: "–",
};

function flowsShown() { return !$("workflows").hidden; }

function showWorkflows(on) {
  if (on === flowsShown()) return;
  $("workflows").hidden = !on;
  $("flows-button").setAttribute("aria-pressed", String(on));
  const flows = state.flows;
  clearInterval(flows.timer);
  flows.timer = null;
  if (on) {
    $("app").classList.remove("show-list");
    $("chat-view").hidden = true;
    $("empty").hidden = true;
    setRunHash();
    loadRuns();
    flows.timer = setInterval(() => {
      loadRuns();
      // A running run's durations grow between its changes.
      const info = flows.details.get(flows.current);
      if (info && info.state === "running") renderRun(info);
    }, 2000);
    if (flows.current) followRun(flows.current);
  } else {
    stopFollowing();
    $("chat-view").hidden = !state.chat;
    $("empty").hidden = !!state.chat;
    history.replaceState(null, "", state.chat ? `#${encodeURIComponent(state.chat)}` : "#");
  }
}

function setRunHash() {
  // #workflows, or #workflows/RUN: a chat id holds no '/', so the two never meet.
  const run = state.flows.current;
  history.replaceState(null, "", run ? `#workflows/${encodeURIComponent(run)}` : "#workflows");
}

function stopFollowing() {
  const follow = state.flows.follow;
  state.flows.follow = null;
  if (follow) follow.abort.abort();
}

function runDuration(info) {
  const end = info.ended_at || (info.state === "running" ? Date.now() / 1000 : info.created_at);
  return fmtDur(Math.max(0, end - info.created_at));
}

function stepCounts(info) {
  // Steps, as `stoker workflow ls` counts them: a fan-out is one step, its items not.
  const steps = (info.steps || []).filter((s) => s.index === null || s.index === undefined);
  const done = steps.filter((s) => s.state === "done" || s.state === "cached").length;
  return `${done}/${steps.length} steps`;
}

function runLink(run, text) {
  const link = el("a", "run-open", text);
  link.href = "#";
  link.dataset.run = run;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    showWorkflows(true);
    selectRun(run);
  });
  return link;
}

async function loadRuns() {
  if (!flowsShown() || state.flows.loading) return;
  state.flows.loading = true;
  try {
    const list = await api("workflows", {});
    const runs = list.runs || [];
    // The steps of the newest runs, read again only when a run changed (its version).
    await Promise.all(runs.slice(0, FLOW_DETAILS).map(async (info) => {
      const known = state.flows.details.get(info.run);
      if (known && known.version === info.version) return;
      try {
        state.flows.details.set(info.run, await api("workflow", { run: info.run }));
      } catch (error) { if (error.code !== "not_found") throw error; }
    }));
    if (flowsShown()) renderRuns(runs);
  } catch (error) {
    if (error.code !== "unauthorized") showError(error.message);
  } finally {
    state.flows.loading = false;
  }
}

function renderRuns(runs) {
  const ul = $("flow-runs");
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.run : null;
  const items = [];
  for (const summary of runs) {
    const info = state.flows.details.get(summary.run) || summary;
    const li = el("li", "flow-row");
    li.tabIndex = 0;
    li.dataset.run = info.run;
    li.dataset.state = info.state;
    if (info.run === state.flows.current) li.classList.add("current");
    const name = el("div", "name");
    name.append(el("span", `badge flow-state flow-${cssName(info.state)}`, info.state), " ",
      el("strong", "flow-name", info.name), " ", el("span", "muted", info.run));
    const meta = el("div", "meta");
    meta.append(el("span", "flow-steps", info.steps ? stepCounts(info) : ""),
      " · ", el("span", "flow-dur", runDuration(info)),
      ` · ${new Date(info.created_at * 1000).toLocaleString()}`,
      " · ", el("span", "flow-path", info.path));
    li.append(name, meta);
    li.addEventListener("click", () => selectRun(info.run));
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter") selectRun(info.run);
      if (event.key === "ArrowDown" && li.nextSibling) li.nextSibling.focus();
      if (event.key === "ArrowUp" && li.previousSibling) li.previousSibling.focus();
    });
    items.push(li);
  }
  if (!items.length) items.push(el("li", "muted", "No runs yet."));
  ul.replaceChildren(...items);
  if (focused) {
    const again = ul.querySelector(`li[data-run="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function selectRun(run) {
  if (state.flows.current !== run) state.flows.openResults = new Set();
  state.flows.current = run;
  setRunHash();
  for (const li of $("flow-runs").children) li.classList.toggle("current", li.dataset.run === run);
  const known = state.flows.details.get(run);
  if (known) renderRun(known); else $("flow-run").hidden = true;
  followRun(run);
}

async function followRun(run) {
  // Read the run, then ask again at each change until it ends (or another run is picked).
  stopFollowing();
  const follow = { run, abort: new AbortController() };
  state.flows.follow = follow;
  let version = -1;
  while (state.flows.follow === follow) {
    let info;
    try {
      info = await api("workflow", { run, wait: version < 0 ? 0 : FLOW_WAIT, version },
        follow.abort.signal);
    } catch (error) {
      if (state.flows.follow !== follow) return;
      showError(error.message);
      state.flows.follow = null;
      return;
    }
    if (state.flows.follow !== follow) return;
    state.flows.details.set(run, info);
    renderRun(info);
    if (info.state !== "running") { state.flows.follow = null; return; }
    version = info.version;
  }
}

function renderRun(info) {
  if (info.run !== state.flows.current) return;
  $("flow-run").hidden = false;
  $("flow-run").dataset.run = info.run;
  $("flow-run").dataset.state = info.state;
  $("flow-run-title").textContent = `${info.name} ${info.run}`;
  $("flow-run-state").textContent = info.state;
  $("flow-run-state").className = `badge flow-state flow-${cssName(info.state)}`;
  const tokens = `${fmtNum(info.tokens || 0)} tokens${info.budget ? ` of ${fmtNum(info.budget)}` : ""}`;
  $("flow-run-meta").textContent =
    `${stepCounts(info)} · ${runDuration(info)} · ${tokens} · ${info.cwd}`;
  const chat = $("flow-run-chat");
  chat.hidden = !info.chat;
  if (info.chat) {
    chat.textContent = `chat ${info.chat}`;
    chat.href = `#${encodeURIComponent(info.chat)}`;
    chat.dataset.chat = info.chat;
  }
  const origin = $("flow-run-origin");
  origin.hidden = !info.origin;
  if (info.origin) {
    origin.textContent = `started by ${info.origin}`;
    origin.href = `#${encodeURIComponent(info.origin)}`;
    origin.dataset.chat = info.origin;
  }
  const inputs = Object.entries(info.inputs || {});
  $("flow-run-inputs").hidden = !inputs.length;
  $("flow-run-inputs").textContent = inputs.length ? "inputs: " + inputs.map(([k, v]) =>
    `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ") : "";
  $("flow-cancel").hidden = info.state !== "running";
  $("flow-resume").hidden = !(info.state === "failed" || info.state === "cancelled");
  $("flow-run-reason").hidden = !info.reason;
  $("flow-run-reason").textContent = info.reason || "";
  const focused = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("#flow-dag li") : null;
  $("flow-dag").replaceChildren(...dagRows(info));
  if (focused) {
    // Keep the keyboard where it was across a redraw.
    const again = $("flow-dag").querySelector(
      `li[data-unit="${CSS.escape(focused.dataset.unit)}"] .flow-label`);
    if (again && again.tagName === "A") again.focus();
  }
  // The list row follows too, between its own refreshes.
  const row = $("flow-runs").querySelector(`li[data-run="${CSS.escape(info.run)}"]`);
  if (row) {
    row.dataset.state = info.state;
    const badge = row.querySelector(".flow-state");
    badge.textContent = info.state;
    badge.className = `badge flow-state flow-${cssName(info.state)}`;
    row.querySelector(".flow-steps").textContent = stepCounts(info);
    row.querySelector(".flow-dur").textContent = runDuration(info);
  }
}

function dagRows(info) {
  // The DAG as a levelled list, as `stoker workflow show` draws it: each step indented one
  // level below the deepest step it needs, named with what it needs; a fan-out's items
  // under it. Everything the file or an agent wrote is text.
  const steps = info.steps || [];
  const byStep = new Map();
  for (const s of steps) if (s.index === null || s.index === undefined) byStep.set(s.step, s);
  const level = new Map();
  const depth = (name, seen = new Set()) => {
    if (level.has(name)) return level.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const step = byStep.get(name);
    const needs = step ? step.needs || [] : [];
    const d = needs.length ? 1 + Math.max(...needs.map((n) => depth(n, seen))) : 0;
    level.set(name, d);
    return d;
  };
  const rows = [];
  for (const s of steps) {
    const item = !(s.index === null || s.index === undefined);
    const indent = depth(s.step) + (item ? 2 : 0);
    const li = el("li", `flow-unit flow-${cssName(s.state)}${item ? " flow-item" : ""}`);
    li.dataset.unit = s.unit;
    li.dataset.state = s.state;
    li.style.marginLeft = `${Math.min(indent, 8) * 1.1}rem`;
    const head = el("div", "flow-unit-head");
    const mark = el("span", "flow-mark", FLOW_MARK[s.state] || "?");
    mark.setAttribute("aria-hidden", "true");
    const label = item ? `${s.unit}${s.item !== null && s.item !== undefined ? " " + s.item : ""}` : s.unit;
    head.append(mark, s.task ? taskLink(s.task, label) : el("span", "flow-label", label));
    head.lastChild.classList.add("flow-label");
    head.append(el("span", `flow-unit-state flow-${cssName(s.state)}`, s.state));
    const started = s.started_at;
    const ended = s.ended_at || (s.state === "running" ? Date.now() / 1000 : null);
    if (started && ended && s.state !== "cached") head.append(el("span", "flow-unit-dur", fmtDur(ended - started)));
    if (s.attempts > 1) head.append(el("span", "muted", `${s.attempts} attempts`));
    if (s.tokens) head.append(el("span", "muted", `${fmtNum(s.tokens)} tokens`));
    if (!item && (s.needs || []).length) head.append(el("span", "flow-needs muted", `← ${s.needs.join(", ")}`));
    li.append(head);
    if (s.error) li.append(el("div", "flow-error error", s.error));
    if (s.result) {
      const result = el("details", "flow-result");
      const open = state.flows.openResults;
      result.open = open.has(s.unit);
      result.addEventListener("toggle", () => {
        if (result.open) open.add(s.unit); else open.delete(s.unit);
      });
      result.append(el("summary", null, "result"), el("pre", null, s.result));
      li.append(result);
    }
    rows.push(li);
  }
  if (!rows.length) rows.push(el("li", "muted", "No steps (the run's file no longer parses)."));
  return rows;
}

async function runAction(type) {
  const run = state.flows.current;
  if (!run) return;
  try {
    const info = await api(type, { run });
    state.flows.details.set(run, info);
    renderRun(info);
    followRun(run);
  } catch (error) { showError(error.message); }
}

// ---- starting a run

async function findWorkflows() {
  const cwd = $("flow-cwd").value.trim();
  $("flow-problem").hidden = true;
  try {
    const list = await api("workflows", cwd ? { available: true, cwd } : { available: true });
    state.flows.available = list.available || [];
  } catch (error) { showError(error.message); return; }
  const pick = $("flow-pick");
  const options = state.flows.available.map((w) => {
    const option = el("option", null, w.error ? `${w.name} (does not validate)` : w.name);
    option.value = w.path;
    return option;
  });
  if (!options.length) {
    const none = el("option", null, "no workflows found");
    none.value = "";
    options.push(none);
  }
  pick.replaceChildren(...options);
  describeWorkflow();
}

function describeWorkflow() {
  const found = state.flows.available.find((w) => w.path === $("flow-pick").value);
  const about = $("flow-about");
  about.replaceChildren();
  if (!found) return;
  about.append(el("div", null, found.description || ""), el("div", "flow-path", found.path));
  if (found.error) about.append(el("div", "error flow-file-error", found.error));
}

function parseInputs(text) {
  const inputs = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`an input is name=value: ${line}`);
    inputs[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return inputs;
}

async function startRun() {
  const problem = $("flow-problem");
  problem.hidden = true;
  const workflow = $("flow-pick").value;
  if (!workflow) { problem.textContent = "Find a workflow first."; problem.hidden = false; return; }
  const body = { workflow };
  const cwd = $("flow-cwd").value.trim();
  if (cwd) body.cwd = cwd;
  try {
    body.inputs = parseInputs($("flow-inputs").value);
    const info = await api("workflow_run", body);
    state.flows.details.set(info.run, info);
    $("flow-start").hidden = true;
    $("flows-new").setAttribute("aria-expanded", "false");
    selectRun(info.run);
    loadRuns();
  } catch (error) {
    // A validation error names every problem, one a line (file:line: key: message).
    problem.textContent = error.message;
    problem.hidden = false;
  }
}

function wireWorkflows() {
  $("flows-button").addEventListener("click", () => showWorkflows(!flowsShown()));
  $("flows-refresh").addEventListener("click", () => {
    loadRuns();
    if (state.flows.current) followRun(state.flows.current);
  });
  $("flows-new").addEventListener("click", () => {
    const on = $("flow-start").hidden;
    $("flow-start").hidden = !on;
    $("flows-new").setAttribute("aria-expanded", String(on));
    if (on) {
      if (!$("flow-cwd").value) $("flow-cwd").value = $("new-cwd").value;
      findWorkflows();
    }
  });
  $("flow-find").addEventListener("click", findWorkflows);
  $("flow-pick").addEventListener("change", describeWorkflow);
  $("flow-start").addEventListener("submit", (event) => { event.preventDefault(); startRun(); });
  $("flow-cancel").addEventListener("click", () => runAction("workflow_cancel"));
  $("flow-resume").addEventListener("click", () => runAction("workflow_resume"));
  for (const id of ["flow-run-chat", "flow-run-origin"]) {
    $(id).addEventListener("click", (event) => {
      event.preventDefault();
      selectChat($(id).dataset.chat);
    });
  }
}

// ------------------------------------------------------------------ wiring

async function send() {
  const text = $("prompt").value;
  if (!text.trim() || !state.chat) return;
  try {
    await api("prompt", { chat: state.chat, text });
    $("prompt").value = "";
  } catch (error) { showError(error.message); }
}

async function start() {
  try {
    const status = await api("status");
    $("daemon").textContent = `v${status.version} · pid ${status.pid}`;
  } catch (error) {
    if (error.code === "unauthorized") return;
    showError(error.message);
    return;
  }
  $("app").hidden = false;
  $("logout").hidden = false;
  $("stats-button").hidden = false;
  $("flows-button").hidden = false;
  $("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin" });
    closeStream();
    $("logout").hidden = true;
    $("stats-button").hidden = true;
    $("flows-button").hidden = true;
    showWorkflows(false);
    showLogin();
  });
  try {
    state.agents = (await api("agents")).agents;
  } catch (error) { showError(error.message); }
  setOptions($("new-agent"), state.agents.map((a) => [a.name, a.name]), null);
  $("prompt-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
    if (event.key === "Escape") { event.preventDefault(); $("cancel").click(); }
  });
  $("cancel").addEventListener("click", async () => {
    try { await api("cancel", { chat: state.chat }); } catch (error) { showError(error.message); }
  });
  $("agent-picker").addEventListener("change", async (event) => {
    try { await api("open_chat", { chat: state.chat, agent: event.target.value }); loadPickers(); }
    catch (error) { showError(error.message); }
  });
  $("mode-picker").addEventListener("change", async (event) => {
    try { await api("mode", { chat: state.chat, mode: event.target.value }); }
    catch (error) { showError(error.message); }
  });
  $("model-picker").addEventListener("change", async (event) => {
    if (!state.modelOption) return;
    try { await api("config", { chat: state.chat, option: state.modelOption, value: event.target.value }); }
    catch (error) { showError(error.message); }
  });
  $("diff-button").addEventListener("click", () => {
    if ($("diff").hidden) showDiff(); else $("diff").hidden = true;
  });
  $("trace-button").addEventListener("click", () => showTrace(!traceShown()));
  $("stats-button").addEventListener("click", () => {
    const on = $("stats").hidden;
    $("stats").hidden = !on;
    $("stats-button").setAttribute("aria-pressed", String(on));
    if (on) {
      $("app").classList.remove("show-list");
      $("stats-table").replaceChildren(el("div", "muted", "loading…"));
      loadStats();
    }
  });
  wireWorkflows();
  for (const id of ["stats-by", "stats-since"]) $(id).addEventListener("change", loadStats);
  $("stats-refresh").addEventListener("click", loadStats);
  $("parent-link").addEventListener("click", (event) => {
    event.preventDefault();
    selectChat($("parent-link").dataset.chat);
  });
  $("timeline-button").addEventListener("click", () => {
    $("timeline").hidden = !$("timeline").hidden;
    if (!$("timeline").hidden) renderTimeline();
  });
  $("menu").addEventListener("click", () => $("app").classList.toggle("show-list"));
  $("new-chat").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { agent: $("new-agent").value || null };
    if ($("new-name").value.trim()) body.chat = $("new-name").value.trim();
    if ($("new-cwd").value.trim()) body.cwd = $("new-cwd").value.trim();
    try {
      const info = await api("open_chat", body);
      $("new-name").value = "";
      await refreshChats();
      selectChat(info.chat);
    } catch (error) { showError(error.message); }
  });
  document.addEventListener("keydown", (event) => {
    if (event.altKey && event.key === "l") {
      event.preventDefault();
      $("app").classList.add("show-list");
      const first = $("chats").querySelector("li.current") || $("chats").firstElementChild;
      if (first) first.focus();
    }
    if (event.altKey && event.key === "p") { event.preventDefault(); $("prompt").focus(); }
    if (event.altKey && event.key === "w" && !$("app").hidden) {
      event.preventDefault();
      showWorkflows(!flowsShown());
      if (flowsShown()) ($("flow-runs").querySelector("li.current") || $("flows-button")).focus();
    }
    if (event.altKey && event.key === "t" && state.chat) {
      event.preventDefault();
      showTrace(!traceShown());
      if (traceShown()) $("trace").focus();
    }
  });
  await refreshChats();
  setInterval(refreshChats, 2000);
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted === "workflows" || wanted.startsWith("workflows/")) {
    const run = wanted.slice("workflows/".length);
    if (run) state.flows.current = run;
    showWorkflows(true);
  } else if (wanted) selectChat(wanted);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").hidden = true;
  start();
});
