"""The wrapped model: ``wrap``/``load``, ``PEFTModel``, normalization inside the model, and the
save format.
"""
