"""Ahead-of-time compilation of the Triton kernels for Hopper (sm_90) on a machine without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` returns the PTX and cubin and
the shared memory a kernel needs; Triton's bundled ptxas reports registers and spills. Compiling
needs the real ``@triton.jit`` functions, which ``TRITON_INTERPRET=1`` replaces, so the tests run
this module as a worker process without the interpreter: ``python -m tests.kernels.aot CASE...``
prints one JSON object with a report per case.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

H100_SMEM = 227 * 1024
TYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
SCALARS = {"sm_scale": "fp32", "p_drop": "fp32", "logvar_clamp": "fp32", "inv_tau": "fp32",
           "eps": "fp32", **{name: "fp32" for name in ("beta_value", "kd_scale", "g_fine", "g_kd", "g_feat", "l_rec")}}


def compile_sm90(kernel, pointer_types, constexprs, *, num_warps=4, num_stages=2):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointer_types:
            sig[name] = pointer_types[name]
        else:
            sig[name] = SCALARS.get(name, "i32")
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def ptxas_report(ptx: str):
    """(registers, spill bytes) from Triton's bundled ptxas for sm_90a, or None without it."""
    import triton

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next((os.path.join(bindir, n) for n in ("ptxas-blackwell", "ptxas")
                  if os.path.isfile(os.path.join(bindir, n))), None)
    if ptxas is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        res = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return regs, spills


def compile_cases(names, spill_check=()):
    from tests.kernels.aot_cases import all_cases

    cases = all_cases()
    out = {}
    for name in names:
        kernel, ptr, const, warps, stages = cases[name]
        try:
            k = compile_sm90(kernel, ptr, const, num_warps=warps, num_stages=stages)
        except Exception as exc:  # reported to the test, which fails with the message
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            continue
        ptx = k.asm["ptx"]
        rep = {"shared": k.metadata.shared, "wgmma": "wgmma" in ptx, "mma": "mma" in ptx}
        if name in spill_check:
            r = ptxas_report(ptx)
            rep["regs"], rep["spills"] = r if r else (None, None)
        out[name] = rep
    return out


def run_worker(names, spill_check=()):
    """Compile ``names`` in a fresh process without the interpreter; -> {name: report}."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, "-m", "tests.kernels.aot", "--spill", ",".join(spill_check), *names]
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=root)
    if res.returncode != 0:
        raise RuntimeError(f"AOT worker failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    argv = sys.argv[1:]
    spill = ()
    if argv and argv[0] == "--spill":
        spill = tuple(n for n in argv[1].split(",") if n)
        argv = argv[2:]
    print(json.dumps(compile_cases(argv, spill)))
