"""The WebSocket transport: handshake checks (`auth`, pure), the token file (`token`), batched
frame encoding (`frames`), the listener itself (`listener`, which imports trio-websocket) and
the subsystem that starts it only when the WebSocket is enabled (`service`).
"""
