"""PyTorch interoperability (needs ``torch``, the ``torch`` extra).

``torch_reference``: the same models in plain ``torch.nn``, written from the spec.
``convert``: torch ``state_dict`` <-> Flax variables (one table, ``MODULES``).
``cli``: ``galr-convert`` (checkpoint conversion both ways and a framework comparison).
"""
