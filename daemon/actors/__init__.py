"""The pool of backend actors: one actor per (chat, agent) and the supervisor that starts,
restarts, hibernates and closes them.

`pool` is the registry and supervisor; `lifecycle` holds the pure decisions (states and
their legal transitions, eviction, liveness, restart intensity); `mailbox` the messages an
actor accepts; `backend` the actor itself. May import `config`, `store`, `channels`,
`execution` and `acp`; never a listener or the service.
"""
