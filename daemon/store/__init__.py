"""The durable store: one SQLite database (WAL) behind one writer thread and one reader.

`sqlite` owns the connections, batched commits and the delta log; `reads` the reads on the
second connection; `progress` what users see of the commits (ticket, backpressure, whether it
can write); `opening` opens the file
(checks before the first write, schema, migrations); `schema` the tables; `faults` what can
go wrong with the file (unavailable, unusable) and what the operator is told; `meta` the
instance id and the clean-exit marker. The SQL of each other table lives in the records
module of the package that owns that table (`actors.records`, `workspaces.records`,
`tasks.records`, `workflows.records`). Imports nothing above `daemon.log` and
`daemon.errors`.
"""
