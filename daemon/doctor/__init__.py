"""`stoker doctor`: checks of the installation, the config, the agents and the daemon
(`checks`, which assembles the report from `facts` and the pure `verdicts`), and of remote
computers (`ssh`); every check is a `report.Check` row.
"""
