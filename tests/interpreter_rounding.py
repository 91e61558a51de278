"""Triton's CPU interpreter converts fp32 to bf16 by truncation (round toward zero: up to 2^-7
relative error, biased toward zero), where a GPU rounds to nearest even (2^-8, unbiased): every
bf16 store of a kernel is then twice as inexact on the CPU as on the GPU, and the bias adds up in
sums. ``install()`` replaces the interpreter's fp32 -> bf16 conversion with round-to-nearest-even
(bit-identical to ``torch.Tensor.to(torch.bfloat16)``), so that bf16 results checked on the CPU
are the GPU's. ``tests/conftest.py`` installs it under ``TRITON_INTERPRET=1``;
``test_interpreter_rounds_bf16_as_a_gpu`` checks it."""

import numpy as np


def _rtne_f32_to_bf16(input):
    bits = np.frombuffer(np.ascontiguousarray(input).tobytes(), dtype=np.uint32).reshape(np.shape(input))
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = ((bits + ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)) >> np.uint32(16))
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(nan, quiet_nan, rounded).astype(np.uint16)


def install() -> str:
    """Patch the interpreter; returns what was done (or why not: another Triton's internals)."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError as exc:
        return f"not installed: {exc}"
    original = getattr(interpreter, "_convert_float", None)
    if original is None:
        return "not installed: this Triton's interpreter has no _convert_float"
    if getattr(original, "_rtne_bf16", False):
        return "installed"

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            return _rtne_f32_to_bf16(input)
        return original(input, input_dtype, output_dtype, rounding_mode)
    convert._rtne_bf16 = True
    interpreter._convert_float = convert
    return "installed"
