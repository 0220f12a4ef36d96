"""`stoker acp`: an ACP agent on stdio for editors, bridged to a daemon chat (`bridge`), with
the mapping between ACP and the client protocol (`mapping`), the daemon connection (`link`)
and stdio handling (`stdio`). A client of the daemon: never imports the service.
"""
