"""Stoker's benchmark suite (`scripts/bench`): each scenario measured against a floor in the
same run.

Not a test package: modules are named `bench_*.py` (or plain helper names) so pytest never
collects them, and CI never runs them. `python -m tests.bench --help` is the driver.
"""
