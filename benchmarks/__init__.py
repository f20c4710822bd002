"""Focused benchmarks built on the harness (suite.measure, suite.device, suite.models)."""
