"""`stoker doctor`: checks of the installation, the config, the agents and the daemon
(`checks`), and of remote computers (`ssh`).
"""
