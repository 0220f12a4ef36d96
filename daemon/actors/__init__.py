"""The pool of backend actors: one actor per (chat, agent) and the supervisor that starts,
restarts, hibernates and closes them.

`pool` is the registry and supervisor; it holds each actor only through its `ref.ActorRef`
(messages in, plain data out) and keeps its own record of which actor tasks run. `chats` is
its book of chats, `restore` what start-up takes over from the last daemon life, `eviction`
the sweeper and the facts it gathers. `lifecycle` holds the pure decisions (states and the table
of their legal transitions, eviction, liveness, restart intensity); `mailbox` the messages
an actor accepts; `records` every SQL statement on the chats, actors, prompts and
transitions tables; `settings` the live config; `descriptions` what agents say about themselves
(`describe_agent`); `backend` the actor itself (and the shared agent processes). May import
`config`, `store`, `channels`, `execution` and `acp`; never a listener or the service.
"""
