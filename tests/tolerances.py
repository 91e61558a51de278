"""Tolerances in one table: (atol, rtol) of a fused op against a float64 reference, by the dtype
of the op's inputs. fp16/bf16 are compared with room for their rounding (bf16 keeps 8 bits of
mantissa; the interpreter truncates fp32 -> bf16 casts, so >= 1 ulp of slack)."""

import torch

TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
