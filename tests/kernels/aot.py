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


# What the report counts in the PTX: global loads and stores by width, asynchronous copies.
_PTX_COUNTS = {
    "ld16": re.compile(r"^\s*(?:@!?%\w+\s+)?ld\.global(?:\.[a-z0-9_:]+)*\.(?:b16|u16|s16|f16|bf16)\s", re.M),
    "ld32": re.compile(r"^\s*(?:@!?%\w+\s+)?ld\.global(?:\.[a-z0-9_:]+)*\.(?:b32|u32|s32|f32)\s", re.M),
    "ld_vec": re.compile(r"^\s*(?:@!?%\w+\s+)?ld\.global(?:\.[a-z0-9_:]+)*\.v[248]\.", re.M),
    "st16": re.compile(r"^\s*(?:@!?%\w+\s+)?st\.global(?:\.[a-z0-9_:]+)*\.(?:b16|u16|s16|f16|bf16)\s", re.M),
    "st_vec": re.compile(r"^\s*(?:@!?%\w+\s+)?st\.global(?:\.[a-z0-9_:]+)*\.v[248]\.", re.M),
    "cp_async": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.(?:ca|cg)\b", re.M),
    "tma": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.bulk\b", re.M),
}


def scalar_sites(ptx: str):
    """Where the scalar 16-bit global loads and stores come from: [{"op": "ld16" or "st16", "file",
    "line", "source" (the kernel source line, stripped), "count"}], from the PTX's line records."""
    import linecache

    files = dict(re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M))
    where, counts = None, {}
    for line in ptx.splitlines():
        loc = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)", line)
        if loc:
            where = (files.get(loc.group(1), "?"), int(loc.group(2)))
            continue
        for op in ("ld16", "st16"):
            if _PTX_COUNTS[op].match(line):
                counts[(op,) + (where or ("?", 0))] = counts.get((op,) + (where or ("?", 0)), 0) + 1
    return [{"op": op, "file": os.path.basename(path), "line": ln, "count": n,
             "source": linecache.getline(path, ln).strip() if os.path.isfile(path) else ""}
            for (op, path, ln), n in sorted(counts.items())]


def runtime_compile(launch, cc=90):
    """Compile one recorded launch (``runtime_specs``) as Triton's runtime would: 16-byte aligned
    pointers and integers divisible by 16 get the divisibility attribute, an integer equal to 1
    becomes a constant, none of it for the kernel's ``do_not_specialize`` arguments."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
    dns = {kernel.arg_names[i] if isinstance(i, int) else i for i in (kernel.do_not_specialize or ())}
    sig, const, attrs = {}, dict(launch["constexprs"]), {}
    for i, name in enumerate(kernel.arg_names):
        if name in const:
            sig[name] = "constexpr"
            continue
        desc = launch["args"][name]
        if "ptr" in desc:
            sig[name] = "*" + desc["ptr"]
            if desc["aligned"]:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif "int" in desc:
            value = desc["int"]
            if value == 1 and name not in dns:
                sig[name], const[name] = "constexpr", 1
                continue
            sig[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0 and name not in dns:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif "float" in desc:
            sig[name] = "fp32"
        elif "bool" in desc:
            sig[name] = "i1"
        else:
            sig[name], const[name] = "constexpr", None
    src = ASTSource(fn=kernel, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32),
                          options={"num_warps": launch["num_warps"], "num_stages": launch["num_stages"]})


def code_report(preset="iemocap", cc=90):
    """Per distinct launch of one training step at ``preset``: registers, spills, shared memory,
    global loads and stores by width, asynchronous copies, tensor-core instructions."""
    from tests.kernels.runtime_specs import distinct, record_in_subprocess

    rows = []
    for launch in distinct(record_in_subprocess(preset, cc)):
        k = runtime_compile(launch, cc)
        ptx = k.asm["ptx"]
        regs, spills = ptxas_report(ptx, cc) or (None, None)
        tiles = ",".join(f"{v}" for n, v in launch["constexprs"].items() if n.startswith("BLOCK"))
        row = {"kernel": launch["kernel"].strip("_").replace("_kernel", ""), "tile": tiles,
               "warps": launch["num_warps"], "stages": launch["num_stages"], "regs": regs, "spills": spills,
               "shared": k.metadata.shared, "tensor_cores": len(TENSOR_CORE.findall(ptx)),
               "unaligned": [n for n, a in launch["args"].items() if "ptr" in a and not a["aligned"]]}
        row.update({name: len(rx.findall(ptx)) for name, rx in _PTX_COUNTS.items()})
        row["scalar_sites"] = scalar_sites(ptx)
        row["constexprs"] = launch["constexprs"]
        rows.append(row)
    return rows


def format_report(rows) -> str:
    cols = ["kernel", "tile", "warps", "stages", "regs", "spills", "shared", "ld16", "ld32", "ld_vec", "st16",
            "st_vec", "cp_async", "tma", "tensor_cores"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


class Worker:
    """A worker process compiling ``names`` for ``cc`` in the background (or, given ``argv``, running
    this module with those arguments); ``result()`` waits and returns its JSON."""

    def __init__(self, names, spill_check=(), cc=90, argv=None):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        args = [sys.executable, "-m", "tests.kernels.aot", *(argv or ["--cc", str(cc), "--spill",
                                                                      ",".join(spill_check), *names])]
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


def start_worker(key, names, spill_check=(), cc=90, argv=None) -> Worker:
    """The worker for ``key``, started on first request (a later request returns the same one)."""
    if key not in _WORKERS:
        _WORKERS[key] = Worker(names, spill_check, cc, argv)
    return _WORKERS[key]


def report_worker(preset="iemocap", cc=90) -> Worker:
    """``code_report`` in a worker process (started once per preset and architecture)."""
    return start_worker(f"report-{preset}-sm{cc}", (), cc=cc, argv=["--report-json", preset, str(cc)])


def stop_workers():
    for worker in _WORKERS.values():
        worker.stop()
    _WORKERS.clear()


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0] == "--report-json":
        print(json.dumps(code_report(argv[1], int(argv[2]))))
        sys.exit(0)
    if argv and argv[0] == "--report":  # --report [PRESET] [CC]: the generated code of one step
        preset = argv[1] if len(argv) > 1 else "iemocap"
        cc = int(argv[2]) if len(argv) > 2 else 90
        print(f"{preset}, sm_{cc}: one bf16-mixed training step's launches, compiled as the runtime does\n")
        print(format_report(code_report(preset, cc)))
        sys.exit(0)
    cc, spill = 90, ()
    while argv and argv[0].startswith("--"):
        if argv[0] == "--cc":
            cc = int(argv[1])
        elif argv[0] == "--spill":
            spill = tuple(n for n in argv[1].split(",") if n)
        argv = argv[2:]
    print(json.dumps(compile_cases(argv, spill, cc)))
