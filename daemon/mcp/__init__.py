"""Stoker's MCP server: the `mcpServers` entry that session/new, load and resume carry
(`offer`: stdio or HTTP), the per-chat credential in it (`credentials`), and the server
both transports serve: its tools' bodies (`tools`, thin calls of task requests through an
`Ask`) and the SDK server object with the descriptions a model reads (`server`). stdio is
`stoker mcp` (daemon/cli/mcp.py, asking over the daemon's socket); HTTP is served by the
daemon (daemon/listeners/mcp_http.py, asking its router in process), also to agents on
other computers through an SSH remote port forward (`offer.remote_mcp_servers`). The
tasks subsystem (daemon/tasks/) answers the requests either way. `stdio` is `stoker mcp`'s
loop; `presence` notes whether each session's agent brought its offered server up (per
actor: each agent of a chat on its own), and warns in the chat when it did not.

Below the actors so that a backend session can ask for the entry; imports only `config`,
`log`, `protocol`, trio and the standard library at module level (`server`, `stdio` and the
tools' error type import the MCP SDK, only where a server is served).
"""
