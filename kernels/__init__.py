"""Raw Triton kernels and their launchers, installed as ``cmath_fast.kernels``.

This package knows nothing of CMATH: it takes pointers, shapes and strides. ``cmath_fast.ops`` is
its only importer (autograd Functions and the functional API live there).
"""
