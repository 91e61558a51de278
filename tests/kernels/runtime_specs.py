"""The kernel launches of one fused training step at a preset's real sizes, recorded as Triton's
runtime would specialise them, without a GPU: ``python -m tests.kernels.runtime_specs PRESET``
prints them as JSON lines (kernel, arguments, constexprs, warps, stages).

The step runs on the CPU under ``TRITON_INTERPRET=1`` with every kernel launch stubbed out (the
outputs the launchers allocate stay uninitialised: only the shapes and the arguments matter), the
launchers choosing the GPU's tiles and 16-bit tiles (as on a GPU, not the interpreter's fp32
upcast). Each argument is recorded as Triton's runtime sees it: a tensor's dtype and whether its
address is 16-byte aligned, an integer's value, a float, None. ``aot.py --report`` compiles each
distinct launch with the divisibility attributes the runtime would pass, so its PTX is what runs.
"""

import inspect
import json
import os
import sys

import torch


def _describe(value):
    if isinstance(value, torch.Tensor):
        name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.bool: "i1"}[value.dtype]
        return {"ptr": name, "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    if value is None:
        return {"none": True}
    raise TypeError(f"unrecorded argument {value!r}")


def record(preset: str, precision: str = "bf16-mixed", cc: int = 90):
    """-> one dict per launch of a training step of the fused model at ``preset``'s benchmark shape,
    the launchers choosing the tiles of compute capability ``cc``'s family."""
    os.environ["TRITON_INTERPRET"] = "1"
    from cmath_fast import CMATH
    from cmath_fast.bench.shapes import MODEL_SHAPES
    from cmath_fast.config import CMATHConfig
    from cmath_fast.kernels import _common, configs
    from cmath_fast.step import train_step
    from cmath_fast.testing import random_batch

    shape = MODEL_SHAPES[f"{preset}-d1024"]
    cfg = CMATHConfig.preset(preset, d_model=shape.d, d_z=shape.d, num_heads=shape.heads, dropout=0.1)
    launches = []

    def stub(kernel, grid, args, kwargs):
        fn = kernel.fn if hasattr(kernel, "fn") else kernel
        names = list(inspect.signature(fn).parameters)
        bound = dict(zip(names, args))
        consts = {k: v for k, v in kwargs.items() if not k.startswith("num_")}
        if "UPCAST" in consts:  # the GPU's choice: 16-bit tiles unless the inputs are fp32
            first = next(v for v in args if isinstance(v, torch.Tensor) and v.is_floating_point())
            consts["UPCAST"] = first.dtype == torch.float32
        launches.append({"kernel": fn.__name__, "module": fn.__module__,
                         "args": {k: _describe(v) for k, v in bound.items() if k not in consts},
                         "constexprs": consts, "num_warps": kwargs.get("num_warps", 4),
                         "num_stages": kwargs.get("num_stages", 3)})

    _common._launch = stub
    configs.interpreting = lambda: False  # the GPU's tiles
    family = configs.family_of(cc // 10, cc % 10)
    configs.gpu_family = lambda index=None: family
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    batch = random_batch(cfg, list(shape.lengths), torch.Generator().manual_seed(0))
    from cmath_fast._checks import skip_value_checks
    with skip_value_checks():  # the stubbed kernels leave their outputs uninitialised
        train_step(model, opt, batch[:5], batch[5], epoch=5, precision=precision)
    return launches


def distinct(launches):
    """One launch per distinct (kernel, specialisation): what the runtime would compile."""
    seen, out = set(), []
    for launch in launches:
        key = json.dumps({k: v for k, v in launch.items()}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(launch)
    return out


def record_in_subprocess(preset: str, cc: int = 90):
    """``record`` in a fresh interpreter process (it patches the kernels and needs the interpreter;
    the caller compiles without it)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-m", "tests.kernels.runtime_specs", preset, str(cc)], capture_output=True,
                         text=True, cwd=root, env=dict(os.environ, TRITON_INTERPRET="1"))
    if res.returncode != 0:
        raise RuntimeError(f"recording the launches failed:\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    for launch in distinct(record(sys.argv[1] if len(sys.argv) > 1 else "iemocap",
                                  cc=int(sys.argv[2]) if len(sys.argv) > 2 else 90)):
        print(json.dumps(launch))
