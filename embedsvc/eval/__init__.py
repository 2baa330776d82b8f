"""Evaluation harness: STS and BEIR retrieval numbers of a strategy (``embedsvc eval``)."""
