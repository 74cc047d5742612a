"""Datasets in [0, 1] pixel space and timm's preprocessing for image files.
"""
