"""Client-facing transports: one client actor per connection (`connection`), the Unix socket
(`unix`) and the WebSocket (`websocket`). They decode requests and hand them to the
service's router; they never reach into an actor.
"""
