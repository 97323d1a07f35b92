"""Reproducible tabular ML: data contract → features → LightGBM → evaluation → registry → serving.

Importing the package is cheap on purpose: heavy libraries (pandas, LightGBM, MLflow, DVC) are
imported by the modules that need them, so the no-op path of the pipeline stays fast.
"""
