"""Benchmarks that print the figures the docs quote: ``fastadapt bench NAME`` runs ``fastadapt.benchmarks.NAME``;
the scripts in benchmarks/ import the others from here (and ``preset_runs``, the runs they train or reuse)."""
