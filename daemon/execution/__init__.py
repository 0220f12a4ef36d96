"""Where agents run: the executor interface and local processes (`local`), confinement of an
agent's file access to its workspace (`fs`), and the terminals served to agents
(`terminals`), and the environment every child gets (`environment`: systemd's variables
scrubbed). The SSH executor (`daemon.ssh`) implements the same interface. Imports only
`config`, `errors` and `log` from the daemon.
"""
