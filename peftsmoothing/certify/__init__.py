"""Randomized-smoothing certification: noise sampling, the one certification engine, sequential
policies, dataset runs and the ``SmoothedClassifier`` facade.
"""
