"""Background tasks: a task is a chat with a parent chat, a title and an origin (a client or
an agent through Stoker's MCP server). The pool supervises it like any chat; this package
keeps the parent link and the task's state (`records`, the `tasks` table), decides the
limits (`limits`, pure), moves each task from queued to its end (`runner`: starts it under
its parent's limit, follows the channels of running tasks and of their parents in-process
through `follow`, cancels with the cascade, brings results back), and answers the task
requests (`service`, its `ROUTES`).

Above the workspaces (a task may work in a new worktree of its parent's project), below
the service. May import `workspaces`, `actors` (the pool's public methods), `channels`,
`store`, `config`, `mcp` and `daemon.router`.
"""
