"""Base models: recipes that rebuild a timm model (checked when read from a file), what is read
from a plain timm model, and the shipped demo ViT.
"""
