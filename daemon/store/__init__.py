"""The durable store: one SQLite database (WAL) behind one writer thread and one reader.

`sqlite` owns the connections, the schema and its migrations, batched commits and the
delta log; `meta` the instance id and the clean-exit marker. The SQL of each other table
lives in the records module of the package that owns that table (`actors.records`,
`workspaces.records`). Imports nothing above `daemon.log`.
"""
