"""The load-test harness behind ``perf/run.py``: checkers (ehc and the reference-design baseline) run
against the simulated cluster, scenarios that break it, and the report that compares them."""
