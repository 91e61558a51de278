"""Ahead-of-time compilation of the Triton kernels for Hopper (sm_90) on a machine without a GPU:
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` returns the PTX and cubin, and
the shared memory the kernel needs; Triton's bundled ptxas reports registers and spills."""

import os
import re
import subprocess

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

H100_SMEM = 227 * 1024
TYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def compile_sm90(kernel, pointer_types, constexprs, *, num_warps=4, num_stages=2,
                 scalar_types=None):
    """Compile ``kernel`` for sm_90. pointer_types: arg name -> "*bf16" etc; every other non-constexpr
    arg is i32 unless named in scalar_types."""
    scalar_types = scalar_types or {}
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointer_types:
            sig[name] = pointer_types[name]
        else:
            sig[name] = scalar_types.get(name, "i32")
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def ptxas_report(compiled, tmp_path):
    """(registers, spill stores + spill loads) from Triton's bundled ptxas for sm_90a."""
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next((os.path.join(bindir, n) for n in ("ptxas-blackwell", "ptxas")
                  if os.path.isfile(os.path.join(bindir, n))), None)
    if ptxas is None:
        return None
    ptx = tmp_path / "k.ptx"
    ptx.write_text(compiled.asm["ptx"])
    res = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", str(ptx), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return regs, spills
