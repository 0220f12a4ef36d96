"""HTTP on the WebSocket's port: the protocol's requests as JSON (`POST /api/<type>`), a
chat's deltas as Server-Sent Events, the OpenAPI document and the web console.

`policy` (who may ask: Host, Origin, token or session; pure), `sessions` (one-time login
codes and session cookies; pure), `api` (request decoding, error statuses), `sse` (one
chat's deltas as an event stream, and its endpoint), `openapi` (the document, from the
msgspec types), `head` (the first request head of a connection, which the listener reads),
`server` (one HTTP/1.1 connection on h11), `static/` (the console's files), `asgi` (one
request answered by an ASGI application over h11: the MCP endpoint's adapter). The WebSocket
listener owns the TCP port and hands every request that is not a WebSocket upgrade to
`server`: this package never imports the WebSocket's.
"""
