"""Workflows: declarative runs of several agents in parallel and in pipelines (docs/WORKFLOWS.md).

`template` (pure) renders `{{ inputs.x }}`-style prompts; `spec` (pure) parses and
validates a workflow file and orders its steps; `records` keeps runs, steps and the result
cache in the store; `runner` drives each run as an actor (its units, their tasks, retries,
timeouts and budgets); `service` loads, starts and prunes the runs and answers the workflow
requests (`ROUTES`). Each step runs as a task (daemon.tasks) under the run's chat.

Above the tasks. May import `tasks`, `actors`, `channels`, `store`, `config`, `workspaces`
and `daemon.router`.
"""
