"""The WebSocket transport: handshake checks (`auth`, pure), the token file (`token`), batched
frame encoding (`frames`), the client's frame headers read as they arrive (`inbound`: a
message over `max_message` is refused from its header), the listener itself (`listener`,
which imports trio-websocket) and the subsystem that starts it only when the WebSocket is
enabled (`service`).
"""
