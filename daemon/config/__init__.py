"""The configuration: the config file's schema and loader (`file`), where the daemon keeps
its files (`paths`), and the agents it can run (`agents`).

Pure data and parsing. Imports only `daemon.errors` and `daemon.log` from the daemon.
"""
