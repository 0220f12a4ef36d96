"""The `stoker` command line: `main` builds the parser from the command modules and maps
errors to exit codes; `common` holds what the command modules share (and imports none of
them); each other module registers one group of commands (`chat` also those of `send` and
`follow`), except `reply`, which renders a turn for `send`. A client of the daemon: imports
`daemon.client` and `protocol`, and the service only for `stoker daemon`.
"""
