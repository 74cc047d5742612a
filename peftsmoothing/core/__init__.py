"""Foundations every other package builds on: validation, seeds, precision, crash-safe files,
fingerprints, registries, parameter bookkeeping and the statistics of randomized smoothing.
"""
