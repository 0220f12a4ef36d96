"""One backend actor: a persistent ACP agent process with one session, reused turn after turn.

`actor` is the mailbox and the lifecycle loop; `generation` one life of the agent process
(spawn, JSON-RPC, stderr, exit watch, stop); `session` the ACP session (handshake, resume,
authentication, modes, config, model, the updates the agent streams); `turns` running,
probing and cancelling turns; `permissions` the agent's permission requests;
`agent_services` the `fs/*` and `terminal/*` requests it makes; `core` the state these parts
share; `events` what their tasks report to the loop; `probe` asking an agent about itself;
`stderr` the agent's stderr (its tail for crash reports, rate-limited into the log);
`shared` a process an agent's chats share (`process = "shared"`; `hosts` their registry): a
generation of such an agent attaches to one instead of spawning its own.

Only the pool creates actors and reaches them through their `ActorRef`; nothing outside this
package reads or writes an actor's attributes.
"""
