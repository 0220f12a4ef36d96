"""stoker-echo: Stoker's built-in reference ACP agent.

A real Agent Client Protocol (ACP v1) agent that speaks JSON-RPC 2.0 on stdin/stdout, one
UTF-8 JSON object per line.  It is Stoker's embedded default agent and the peer every
integration test of the daemon drives, so it is deterministic, starts fast (standard library
only) and does exactly what its prompt says.  Run it with ``python -m daemon.echo_agent`` or
``stoker echo-agent``; :func:`daemon.echo_agent.agent.main` is the entry point.

Modules
=======
Standard library only, imports nothing from the rest of the daemon; from the bottom up:
``jsonrpc`` (error codes, RpcError, JSON encoding), ``options`` (the knobs), ``sessions``
(Session, Turn and their files), ``wire`` (stdout/stderr writes), ``state`` (what the reader
thread and the prompt workers share), ``client_calls`` (requests to the client and their
responses), ``methods`` (the protocol surface below), ``commands`` and ``client_commands``
(the prompt language below), ``mcp_client`` and ``mcp_commands`` (``/mcp``: calls to
the MCP servers a session was given), ``turns`` (one prompt, start to end), ``agent`` (the
reader loop that dispatches every line, and ``main``).

Protocol surface
================
``initialize``
    Answers ``protocolVersion`` 1, ``agentInfo`` {name "stoker-echo", version "1"},
    ``loadSession`` true, ``promptCapabilities`` {image, audio false, embeddedContext},
    ``sessionCapabilities`` {resume, close, list} and ``authMethods`` (empty unless
    ``--require-auth``).  Records the client's ``fs.readTextFile``, ``fs.writeTextFile`` and
    ``terminal`` capabilities; ``/read``, ``/write`` and ``/terminal`` refuse (with an
    ``error: ...`` reply) when the client did not advertise them.
``authenticate {methodId}``
    ``{}``.  With ``--require-auth`` only ``echo-login`` is accepted (else -32602) and it
    unlocks ``session/new``, ``session/load`` and ``session/resume`` (which answer -32000
    "Authentication required" before that).
``session/new {cwd, mcpServers}``
    A fresh uuid ``sessionId``, ``modes`` (``default``, ``plan``) and ``configOptions``: a
    select ``model`` (``echo-1``/``echo-2``, category ``model``) and a boolean ``verbose``.
    Both options and the mode are inert: they are stored, persisted and reported, nothing more.
``session/load {sessionId, cwd, mcpServers}``
    Replays the stored history as ``session/update`` notifications, in order, *before* the
    response: one ``user_message_chunk`` per prompt text and one ``agent_message_chunk`` per
    reply text (entries with empty text are not replayed).  Unknown session: -32002.
``session/resume {sessionId, cwd}``
    Reattaches without replay.  Unknown session: -32002.  Load and resume both return the
    stored modes/configOptions and adopt the request's ``cwd``.
``session/close {sessionId}``
    Cancels a running prompt (as ``session/cancel`` would), forgets the session in memory
    and answers ``{}``; its file stays, so load/resume keep working.
``session/list {cwd?}``
    Every session file in the state dir (optionally only those with that cwd), most recently
    updated first: ``sessionId``, ``cwd``, ``title`` (when set), ``updatedAt``.
``session/set_mode {sessionId, modeId}``
    ``{}`` after a ``current_mode_update`` notification; unknown mode: -32602.
``session/set_config_option {sessionId, configId, value}``
    ``model`` takes a string value id, ``verbose`` a boolean (``"type": "boolean"``).  Sends a
    ``config_option_update`` notification, then answers ``{configOptions}``; unknown
    option or value: -32602.
``session/prompt {sessionId, prompt}``
    Runs the prompt language below on a worker thread (the agent keeps answering requests
    meanwhile) and answers ``{stopReason: "end_turn" | "cancelled", usage: {totalTokens,
    inputTokens, outputTokens}}`` where inputTokens is the number of words of the prompt text
    and outputTokens the number of ``agent_message_chunk`` notifications sent.  Unknown
    session: -32002; a second prompt while one runs on that session: -32602 "a prompt is
    already running".
``session/cancel {sessionId}`` (notification)
    Ends the running prompt promptly with stopReason ``cancelled``.  A pending
    ``session/request_permission`` stays answered by whatever the client sends (the spec
    says ``cancelled``); the agent waits at most 5 s for that answer.
Anything else
    Unknown requests (``_``-prefixed extension methods included) get -32601 "Method not
    found"; unknown notifications and responses to unknown ids are ignored; a line that is not
    JSON gets a -32700 parse error (id null) and one that is JSON but not a JSON-RPC message
    -32600; the agent carries on either way.  On stdin EOF it cancels what runs and exits 0;
    SIGTERM kills it at once (default handler).

Prompt language
===============
Non-text blocks are described first, in order, one ``agent_message_chunk`` each, ending
with a newline: ``image MIME N bytes`` (N = decoded base64 length; ``audio`` alike),
``link URI`` for a ``resource_link``, ``resource URI N chars`` for an embedded text resource
(``resource URI N bytes`` for a blob).  Then the text blocks are joined with a space,
stripped, and interpreted:

``plain text``         echoed word by word: chunks ``w1``, `` w2``, ... (a slash word that is
                       not a command below is plain text too)
``/chunks N``          N chunks ``c0``, `` c1`` ... `` c{N-1}``; cancellable
``/lines W1 W2 ...``   each word on its own line: chunks ``W1``, ``\nW2`` ...; cancellable
``/sleep MS``          after MS ms one chunk ``slept MS``; cancellable
``/slow MS``           silent for MS ms (requests are still answered), then ``slow MS``;
                       cancellable
``/hang``              stops reading stdin and answering anything, until killed
``/stall``             this turn stays silent and ignores session/cancel and session/close
                       until stdin EOF; the agent answers everything else meanwhile (one
                       stuck session on a process that works)
``/crash``             chunk ``crashing``, stderr ``stoker-echo: crashing on request``,
                       then exits with status 3 at once
``/exit CODE``         exits with status CODE without replying
``/pid``               chunk: the process id
``/tool``              ``tool_call`` (id ``tool-N``, title "echo tool", kind other, pending),
                       ``tool_call_update`` in_progress, ``tool_call_update`` completed with
                       text content "tool output", then chunk ``tool done``
``/write PATH TEXT``   ``fs/write_text_file`` (PATH made absolute against the session cwd);
                       chunk ``wrote ABSPATH`` or ``error: MESSAGE``
``/read PATH``         ``fs/read_text_file``; chunk: the content, or ``error: MESSAGE``
``/permission``        ``tool_call`` (kind edit, "echo wants permission", pending), then
                       ``session/request_permission`` with options allow (allow_once), always
                       (allow_always), reject (reject_once); chunk ``permission: OPTIONID`` or
                       ``permission: cancelled``; stopReason cancelled if the turn was
                       cancelled meanwhile
``/terminal CMD ARGS`` ``terminal/create`` (cwd = session cwd, outputByteLimit 65536; ARGS are
                       split shell-style), ``terminal/wait_for_exit``, ``terminal/output``,
                       ``terminal/release``; chunk: the output followed directly by
                       ``[exit N]`` or ``[signal S]``, or ``error: MESSAGE``.  On cancel the
                       agent stops waiting and releases the terminal.
``/remember WORDS``    adds WORDS to the session memory; chunk ``remembered WORDS``
``/recall``            chunk: the remembered items joined by spaces, or ``nothing remembered``
``/think TEXT``        ``agent_thought_chunk`` TEXT, then chunk ``thought``
``/plan``              ``plan`` with 2 entries (priority medium; in_progress, pending);
                       chunk ``planned``
``/commands``          ``available_commands_update`` with 2 commands; chunk ``commands sent``
``/title TEXT``        ``session_info_update`` {title, updatedAt}; chunk ``titled``
``/usage``             ``usage_update`` {used 1234, size 200000, cost 0.01 USD};
                       chunk ``usage sent``
``/mode MODEID``       as session/set_mode (``current_mode_update``); chunk ``mode MODEID``
``/unknown``           a ``session/update`` of unknown kind ``x_echo_future`` (``payload: 1``)
                       and a ``_echo/custom`` {sessionId, n: 1} notification;
                       chunk ``unknown sent``
``/stderr N``          N lines ``echo stderr line I`` (I = 0..N-1) on stderr; chunk ``stderr N``
``/bigline KB``        one chunk of KB*1024 ``x``
``/error``             the prompt fails with JSON-RPC error -32603 "echo: requested failure"
``/transient N [late]`` the first N prompts of exactly this text on this session (in this
                       process) fail with -32603 "echo: rate limit exceeded (429 Too Many
                       Requests), failure I of N"; the next one answers chunk ``recovered
                       after N transient failures`` (and the count starts again).  With
                       ``late``, each failing prompt first sends the chunk ``partial``
``/meta-usage``        an empty ``agent_message_chunk`` whose ``_meta.usage`` reports one call's
                       tokens (inputTokens 100, outputTokens 7, totalTokens 107,
                       cachedReadTokens 3), as qwen does; chunk ``metered``
``/meta-usage MS``     the same report, then MS ms later the chunk ``metered`` (usage
                       reported mid-turn); cancellable
``/tool-open [CMD ..]`` a ``tool_call`` (kind other, "open tool", pending) never updated,
                       then runs CMD (one of the commands above, e.g. ``/crash``,
                       ``/hang``, ``/sleep MS``); without CMD chunk ``tool left open``
``/ask METHOD``        sends a request METHOD (params ``{sessionId}``) to the client; chunk
                       ``error CODE: MESSAGE`` or ``result JSON``
``/spawn SECONDS``     starts ``sleep SECONDS`` in a new session (it leaves the agent's process
                       group, as tool processes of real agents do); chunk: its pid
``/mcp [S:]TOOL JSON`` calls TOOL with the JSON object as arguments on the MCP server S of
                       the session's ``mcpServers`` (default: the first): a stdio server is
                       started on first use, an HTTP one (``type: http``, given only with
                       ``--mcp-http``) is called at its url with its headers
                       (``mcp_client``); chunk: the tool's text, or ``error: TEXT`` for a
                       tool error or a server that cannot be reached; cancellable

A command whose argument is missing or malformed replies ``error: USAGE`` and ends the turn.
Every prompt's text and its reply (the concatenated chunks) are appended to the session
history, and to its ``<sessionId>.history.jsonl`` file, before the prompt is answered.

Knobs (a flag wins over its environment variable)
==================================================
``--state-dir DIR`` (``STOKER_ECHO_STATE``)
    Where sessions live, so they survive the agent's restarts and ``kill -9``:
    ``<sessionId>.json`` {sessionId, cwd, memory, mode, config, title, updatedAt} is written
    atomically (temp file + ``os.replace``) when one of them changes, and each turn appends
    a line {user, agent, updatedAt} to ``<sessionId>.history.jsonl``.  Default
    ``$XDG_STATE_HOME/stoker-echo``, else ``~/.local/state/stoker-echo``.
``--no-load`` / ``--no-resume`` / ``--no-close``
    Do not advertise (and answer -32601 to) session/load, session/resume, session/close.
``--no-image``
    promptCapabilities.image and embeddedContext false.
``--require-auth`` / ``--no-require-auth`` (``STOKER_ECHO_REQUIRE_AUTH=1``)
    Advertise the ``echo-login`` auth method and require it before sessions.
``--fail-initialize`` / ``--no-fail-initialize`` (``STOKER_ECHO_FAIL_INIT=1``)
    On ``initialize``: one line on stderr, then exit status 4.
``--startup-delay MS`` (``STOKER_ECHO_STARTUP_DELAY_MS``)
    Sleep MS ms before reading stdin.
``--models-only``
    No ``configOptions``; instead the unstable ``models`` state (``currentModelId``,
    ``availableModels`` echo-1/echo-2) in session setup answers, and ``session/set_model``
    {sessionId, modelId} (for testing clients' fallback to it).
``--mcp-http`` / ``--no-mcp-http`` (``STOKER_ECHO_MCP_HTTP=1``)
    Advertise ``mcpCapabilities.http``: a client may then give HTTP MCP servers (Streamable
    HTTP; ``/mcp`` handles both JSON and SSE answers).
``STOKER_ECHO_MCP_START=demand|eager|late``
    When the session's MCP servers start (``mcp_commands``): ``demand`` (default) at the
    first ``/mcp``, said in ``initialize`` (``agentCapabilities._meta``); ``eager`` as soon
    as the session is set up; ``late`` at the first ``/mcp``, unsaid (a failed start, to a
    client that checks).
``--linger`` (``STOKER_ECHO_LINGER=1``)
    Ignore stdin EOF and keep running (until a signal), like agents that do not notice their
    client went away: the tests of orphan reclaim and process-tree stop need one.
"""
