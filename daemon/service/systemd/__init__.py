"""systemd integration: sd_notify (READY/STATUS/WATCHDOG/STOPPING) and socket activation
(LISTEN_FDS). Pure protocol code over sockets; imports nothing from the daemon but `log`.
"""
