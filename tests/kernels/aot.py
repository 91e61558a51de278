"""Ahead-of-time compilation of the Triton kernels for any NVIDIA architecture on a machine without
a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", CC, 32))`` returns the PTX and cubin and
the shared memory a kernel needs; Triton's bundled ptxas, run for that architecture, reports
registers and spills. Compiling needs the real ``@triton.jit`` functions, which
``TRITON_INTERPRET=1`` replaces, so the tests run this module as a worker process without the
interpreter: ``python -m tests.kernels.aot --cc 86 CASE...`` prints one JSON object with a report
per case. Workers start in the background (``start_worker``) so that compiling overlaps the
interpreter tests on a second core.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

# Per-block opt-in shared memory of each compiled architecture (bytes).
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448, 100: 232_448, 120: 101_376}
H100_SMEM = SHARED_LIMIT[90]
TYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
SCALARS = {"sm_scale": "fp32", "p_drop": "fp32", "logvar_clamp": "fp32", "inv_tau": "fp32",
           "eps": "fp32", **{name: "fp32" for name in ("beta_value", "kd_scale", "g_fine", "g_kd", "g_feat", "l_rec")}}
# A tensor-core instruction, as an instruction (optionally predicated), not a substring of a name.
TENSOR_CORE = re.compile(r"^\s*(?:@!?%\w+\s+)?(mma\.sync|wgmma\.mma_async|tcgen05\.mma)\b", re.M)


def arch_name(cc: int) -> str:
    """What Triton compiles for: the architecture-specific "a" targets from sm_90 on."""
    return f"sm_{cc}{'a' if cc >= 90 else ''}"


def has_16bit_dots(const: dict) -> bool:
    """Whether a case's kernel runs tl.dot on 16-bit tiles (attention and row convolutions)."""
    return "BLOCK_N" in const and "BLOCK_M" in const and not const.get("UPCAST", True)


def compile_for(kernel, pointer_types, constexprs, cc=90, *, num_warps=4, num_stages=2):
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
    return triton.compile(src, target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def ptxas_report(ptx: str, cc: int = 90):
    """(registers, spill bytes) from Triton's bundled ptxas for the architecture, or None without it."""
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
        res = subprocess.run([ptxas, "-v", f"--gpu-name={arch_name(cc)}", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    text = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    if regs is None:
        raise RuntimeError(f"ptxas for {arch_name(cc)} failed: {text.strip()[-1000:]}")
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return int(regs.group(1)), spills


def compile_cases(names, spill_check=(), cc=90):
    from cmath_fast.kernels.configs import family_of
    from tests.kernels.aot_cases import all_cases

    cases = all_cases(family_of(cc // 10, cc % 10))
    out = {}
    for name in names:
        kernel, ptr, const, warps, stages = cases[name]
        try:
            k = compile_for(kernel, ptr, const, cc, num_warps=warps, num_stages=stages)
        except Exception as exc:  # reported to the test, which fails with the message
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            continue
        ptx = k.asm["ptx"]
        rep = {"shared": k.metadata.shared, "tensor_cores": sorted(set(TENSOR_CORE.findall(ptx)))}
        if name in spill_check:
            r = ptxas_report(ptx, cc)
            rep["regs"], rep["spills"] = r if r else (None, None)
        out[name] = rep
    return out


class Worker:
    """A worker process compiling ``names`` for ``cc`` in the background; ``result()`` waits."""

    def __init__(self, names, spill_check=(), cc=90):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        args = [sys.executable, "-m", "tests.kernels.aot", "--cc", str(cc), "--spill", ",".join(spill_check), *names]
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=self.err, env=env, cwd=root)
        self.cc = cc
        self._result = None

    def result(self):
        if self._result is None:
            code = self.proc.wait()
            self.out.seek(0)
            self.err.seek(0)
            if code != 0:
                raise RuntimeError(f"AOT worker for sm_{self.cc} failed:\n{self.err.read()[-4000:]}")
            self._result = json.loads(self.out.read().strip().splitlines()[-1])
        return self._result

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_WORKERS = {}


def start_worker(key, names, spill_check=(), cc=90) -> Worker:
    """The worker for ``key``, started on first request (a later request returns the same one)."""
    if key not in _WORKERS:
        _WORKERS[key] = Worker(names, spill_check, cc)
    return _WORKERS[key]


def stop_workers():
    for worker in _WORKERS.values():
        worker.stop()
    _WORKERS.clear()


if __name__ == "__main__":
    argv = sys.argv[1:]
    cc, spill = 90, ()
    while argv and argv[0].startswith("--"):
        if argv[0] == "--cc":
            cc = int(argv[1])
        elif argv[0] == "--spill":
            spill = tuple(n for n in argv[1].split(",") if n)
        argv = argv[2:]
    print(json.dumps(compile_cases(argv, spill, cc)))
