"""Traces and statistics: where a turn's time, tokens and failures went.

`model` folds a chat's logged deltas into turn timelines and groups them into statistics
(pure); `service` reads the store and answers the `trace` and `stats` requests. It sits
beside the workspaces in the layers: it reads the store and the protocol, nothing above.
"""
