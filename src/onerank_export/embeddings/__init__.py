"""Embedding tables outside the dense graph (split mode): the store, its lookup and its backends. Torch-free."""
