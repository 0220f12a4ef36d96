"""`stoker acp`: an ACP agent on stdio for editors, bridged to daemon chats. `bridge` answers
the editor's requests and owns the attached sessions (`session`, with the request `params`
it decodes); `forward` streams each session's deltas and permission requests back to the
editor; `mapping` translates between ACP and the client protocol; `link` is the daemon
connection and `stdio` the editor's. A client of the daemon: never imports the service.
"""
