"""The daemon as a whole: the supervision tree's root (`root`), subsystems started on demand
(`subsystems`) and systemd integration (`systemd`). The top layer: may import every other
package of the service, and nothing imports it but the CLI.
"""
