"""Benchmarks that print the figures the docs quote: ``fastadapt bench NAME`` runs ``fastadapt.benchmarks.NAME``."""
