"""Continuous training: triggers → new data version → retrain → gate → canary → decide.

`tabml-loop run` (one iteration, safe from cron) is built from these modules; every step is an
ordinary, reproducible commit and a crash at any step is resumed by the next run.
"""
