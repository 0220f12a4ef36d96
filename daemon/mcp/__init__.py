"""Stoker's MCP server as the daemon offers it to agents: the `mcpServers` entry that
session/new, load and resume carry (`offer`) and the per-chat credential in it
(`credentials`). The server program itself is a client of the daemon (`stoker mcp`,
daemon/cli/mcp.py); the tools it serves are answered by the tasks subsystem
(daemon/tasks/).

Below the actors so that a backend session can ask for the entry; imports only `config`
and the standard library.
"""
