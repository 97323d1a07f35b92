"""Thin pipeline stage entry points (`python -m tabml.stages.<name>`), one per `dvc.yaml` stage.

Each parses its paths from the command line (so `dvc.yaml` is the single map of the data flow),
reads its section of params.yaml, and calls the library.
"""
