"""Workspaces: git worktrees per workspace (`service`, `worktrees`, `git`), the hosts they live
on (`hosts`), their records (`records`), and the orphan reaper (`reaper`, with its pure
verdicts in `reaping`). May import `store`, `execution`, `config`.
"""
