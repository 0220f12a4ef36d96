"""Client-facing transports: one client actor per connection (`connection`), the Unix socket
(`unix`) and the WebSocket (`websocket`, with HTTP on its port: `http`), and Stoker's MCP
server over HTTP for agents (`mcp_http`, its own loopback port). They decode requests and
hand them to the service's router; they never reach into an actor.
"""
