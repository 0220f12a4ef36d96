"""Stoker's reference ACP agent (`stoker echo-agent`, `python -m daemon.echo_agent`): it echoes,
and has commands for tests and demos (delays, crashes, floods, permissions, terminals).
Stands alone: imports nothing from the daemon.
"""
