"""Bridges to other tools' interfaces (lm-evaluation-harness). Top of the package: imports harness and below."""
