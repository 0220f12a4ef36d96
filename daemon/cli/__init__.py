"""The `stoker` command line: `main` builds the parser from the command modules and maps
errors to exit codes; each other module registers one group of commands. A client of the
daemon: imports `daemon.client` and `protocol`, and the service only for `stoker daemon`.
"""
