"""Converging a node to a verified GRID driver, step by step."""
