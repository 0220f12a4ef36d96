"""The daemon as a whole: the supervision tree's root (`root`: the children, `serve`), the
child-spec runner (`tree`), the one request router (`router`), the core requests (`core`),
config reloads (`reload`) and systemd integration (`systemd`). The top layer: may import
every other package of the service, and nothing imports it but the CLI, except `router`: a
leaf (protocol and errors only) through which the subsystems declare their requests.
"""
