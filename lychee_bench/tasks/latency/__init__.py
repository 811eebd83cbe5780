"""End-to-end decode latency (issue #5, SPEC §6): one whole decode step at a fixed context, per method."""
