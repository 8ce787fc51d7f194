"""Experiments: compose a regime, a workload and stage variants, drive the load, record it.

``python -m experiments run ...`` is the command line (see :mod:`experiments.cli`); the run
protocol is in :mod:`experiments.runner` and the Locust load in :mod:`experiments.load`.
"""
