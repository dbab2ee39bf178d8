"""Triton kernels of decodekit, installed as ``decodekit.triton_kernels``.

One module per op family (``rng``, ``sampling``, ...), Liger-Kernel style: kernel, launcher and
raw backend function of an op live together. Import these through ``decodekit.ops``, which
validates arguments and chooses the backend.
"""
