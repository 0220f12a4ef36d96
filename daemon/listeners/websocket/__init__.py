"""The WebSocket transport: handshake checks (`auth`, pure), the token file (`token`), batched
frame encoding (`frames`) and the listener itself (`listener`, which imports trio-websocket
only when the WebSocket is enabled).
"""
