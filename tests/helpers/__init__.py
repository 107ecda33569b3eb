"""Helpers shared by the test modules (no tests here): media, synthetic data, tiny models, paths."""
