"""The daemon as a whole: the supervision tree's root (`root`: the children, `serve`), the
child-spec runner (`tree`), the core requests (`core`), config reloads (`reload`) and systemd
integration (`systemd`). The top layer of the service: may import every package below it,
and nothing imports it but the CLI. The one request router is `daemon.router`, a leaf below
every subsystem, so that each declares its requests without importing this package.
"""
