"""Regression checking: result sets read back (sources), compared against a baseline (compare), the smoke suite."""
