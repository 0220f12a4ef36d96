"""Workspaces: git worktrees per workspace (`service`, `worktrees`, `git`), the hosts they live
on (`hosts`), their records (`records`), the orphan reaper (`reaper`, with its pure verdicts
in `reaping`) and restoring from its trash (`restore`), and the child of the supervision tree
that starts them and answers their requests (`subsystem`). May import `store`, `execution`,
`config`, the pool's public methods, and `daemon.router` to declare requests.
"""
