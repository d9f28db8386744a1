"""Shared plumbing for the Triton kernels: the one `HAS_TRITON` guard, the skip reason, and the launch
in either of Triton's two modes.

Triton picks its mode once per process, when `triton` is first imported: with `TRITON_INTERPRET=1` every
`@triton.jit` function (the kernels here and triton.language's own `tl.sum`, `tl.max`...) becomes an
`InterpretedFunction` that runs on CPU tensors through numpy; without it they are `JITFunction`s compiled
for a GPU. The two do not mix in one process (the compiler cannot call an interpreted `tl.sum`, the
interpreter cannot call a compiled one). Hence:
- `KB_TRITON_INTERPRET=1` (the suite's switch) is turned into `TRITON_INTERPRET=1` here, before this
  module imports triton. That only works if nothing imported triton earlier: `missing_reason` says so
  when it did not take, and `TRITON_INTERPRET=1` in the environment always works.
- Compiled mode: CUDA tensors, `triton.autotune` over each kernel's GPU config list; the chosen config is
  reported for the `config` column. CPU cases are skipped: the interpreter checks results, it does not
  measure speed.
- Interpreted mode: CPU tensors, each kernel's single small `interpret` config (autotuning in the
  interpreter would only multiply its slowness). bfloat16 is skipped (numpy has no bfloat16).
- Ahead-of-time compilation (kernels/triton/aot.py) needs compiled mode, so it runs in a child process
  when this one is interpreted.
"""
from __future__ import annotations

import os

import torch

INTERPRET_ENV = "KB_TRITON_INTERPRET"
CPU_REASON = ("Triton needs a GPU; the interpreter checks results only "
              f"(set {INTERPRET_ENV}=1 to run interpreted)")
BF16_REASON = "the Triton interpreter has no bfloat16 (numpy has none); bfloat16 runs on the GPU only"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def interpret_requested() -> bool:
    """True when the user asked for interpreted runs on the CPU."""
    return _env_true(INTERPRET_ENV) or _env_true("TRITON_INTERPRET")


if _env_true(INTERPRET_ENV):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # effective only if triton is not imported yet

try:  # one guard for the whole backend; a missing triton never breaks an import
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    HAS_TRITON = True
    TRITON_VERSION = triton.__version__
    # the mode triton was imported in (see the module docstring), read off triton.language itself
    INTERPRETED = isinstance(tl.sum, InterpretedFunction)
except Exception as _exc:  # pragma: no cover - exercised only where triton is absent or broken
    # the import's own words: "not installed" only when it is not (a broken install says why)
    TRITON_IMPORT_ERROR = ("triton is not installed" if isinstance(_exc, ModuleNotFoundError)
                           and _exc.name == "triton" else f"triton failed to import: {type(_exc).__name__}: {_exc}")
    triton = None
    tl = None
    InterpretedFunction = ()
    HAS_TRITON = False
    TRITON_VERSION = None
    INTERPRETED = False

try:  # the registry's Skip, once the harness is there; a stand-in with the same meaning until then
    from harness.registry import Skip
except Exception:  # pragma: no cover
    class Skip(Exception):
        """A case this variant does not support (-> a `skipped` row with this reason)."""


def missing_reason(case) -> str | None:
    """triton: a CUDA GPU (sm_80+), or the interpreter on the CPU with KB_TRITON_INTERPRET=1

    The `Requires.check` of every Triton variant: None when the case can run, else why not."""
    if not HAS_TRITON:
        return TRITON_IMPORT_ERROR
    device = str(getattr(case, "device", "cpu"))
    if device.startswith("cuda"):
        if INTERPRETED:
            return "this process runs Triton interpreted (TRITON_INTERPRET=1); a GPU timing would be meaningless"
        if not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        major, _ = torch.cuda.get_device_capability()
        if major < 8:
            return f"the Triton kernels target sm_80 and newer (this GPU is sm_{major}x)"
        return None
    if device == "cpu":
        if not interpret_requested():
            return CPU_REASON
        if not INTERPRETED:
            return ("triton was imported before KB_TRITON_INTERPRET=1 could take effect; "
                    "set TRITON_INTERPRET=1 in the environment")
        if getattr(case, "dtype", None) == torch.bfloat16:
            return BF16_REASON
        return None
    return f"Triton kernels do not run on device {device!r}"


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision: exact fp32 ("ieee") for float32 inputs so that the float32 tolerances
    of the suites hold (TF32 keeps 10 mantissa bits); 16-bit inputs go to the tensor cores as they are
    and ignore the setting."""
    return "ieee" if dtype == torch.float32 else "tf32"


def config_str(cfg) -> str:
    """'BLOCK_M=128,BLOCK_N=64,warps=4,stages=3' for the `config` column ("interpreted:..." there)."""
    if cfg is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted(cfg.kwargs.items())]
    if INTERPRETED:
        return "interpreted:" + ",".join(parts)
    return ",".join(parts + [f"warps={cfg.num_warps}", f"stages={cfg.num_stages}"])


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


class TritonKernel:
    """One `@triton.jit` kernel with its GPU autotuning list and its interpreter config.

    Calling it launches on the grid and returns the `triton.Config` it ran with: the autotuned one in
    compiled mode, `interpret` in interpreted mode; the launch's own values of the `report` arguments
    (a tile size fixed by the wrapper, the path taken) are added to it for the `config` column.
    """

    def __init__(self, fn, configs, key, interpret, prune_configs_by=None, report=("BLOCK_N", "LOOPED")):
        self.fn = fn
        self.name = fn.__name__
        self.configs = list(configs)
        self.interpret_config = interpret
        self.report = tuple(report)
        self.tuned = None
        if not INTERPRETED:
            self.tuned = triton.autotune(configs=self.configs, key=list(key),
                                         prune_configs_by=prune_configs_by)(fn)

    def __call__(self, grid, *args, **kwargs):
        if INTERPRETED:
            cfg = self.interpret_config
            self.fn[grid](*args, **kwargs, **cfg.kwargs)
        else:
            dev = next(a.device for a in args if isinstance(a, torch.Tensor))
            if dev.type != "cuda":
                raise RuntimeError(CPU_REASON)
            self.tuned[grid](*args, **kwargs)
            cfg = self.tuned.best_config
        fixed = {k: kwargs[k] for k in self.report if k in kwargs}
        if not fixed:
            return cfg
        return triton.Config({**fixed, **cfg.kwargs}, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


class Launcher:
    """The zero-argument launcher the registry expects; remembers the config of its last call."""

    def __init__(self, run, out):
        self._run = run
        self.out = out
        self.config = None

    def __call__(self):
        self.config = self._run()
        return self.out


def config(launcher) -> str:
    """`config=` hook of the registry: the configuration of the launcher's last call."""
    return config_str(getattr(launcher, "config", None))


MAX_PER_THREAD = 32  # row kernels: most row elements one thread holds in registers before it spills
MIN_PER_THREAD = 8   # and fewest: 8 x 16-bit = one 16-byte vector load per thread; fewer idles lanes


def prune_row_configs(configs, named_args, **kwargs):
    """`early_config_prune` for the one-row-per-program kernels: keep the warp counts that give each
    thread between MIN_PER_THREAD and MAX_PER_THREAD elements of a BLOCK_N tile; for rows too short for
    any, the config with the fewest warps."""
    block = kwargs.get("BLOCK_N", named_args.get("BLOCK_N"))
    keep = [c for c in configs
            if MIN_PER_THREAD <= c.kwargs.get("BLOCK_N", block) // (32 * c.num_warps) <= MAX_PER_THREAD]
    return keep or [min(configs, key=lambda c: c.num_warps)]


def row_kernels(kernel):
    """The two launchers of a one-row-per-program kernel (softmax, RMSNorm, LayerNorm): FUSED keeps the whole
    row in registers (BLOCK_N follows the row, autotuning varies the warps); LOOPED streams BLOCK_N tiles.
    GPU autotune lists shared by the three; num_stages stays 1 (no tl.dot to pipeline). Under the
    interpreter a 128-column tile exercises the loop and its ragged last tile at 129 and 1000 columns."""
    fused_configs = [triton.Config({}, num_warps=w, num_stages=1) for w in (1, 2, 4, 8, 16, 32)]
    # looped tiles: the same 8..32 elements-per-thread rule, applied once here
    looped_configs = prune_row_configs([triton.Config({"BLOCK_N": b}, num_warps=w, num_stages=1)
                                        for b in (1024, 2048, 4096) for w in (4, 8, 16)], {})
    fused = TritonKernel(kernel, fused_configs, key=["n_cols"], interpret=triton.Config({}),
                         prune_configs_by={"early_config_prune": prune_row_configs})
    looped = TritonKernel(kernel, looped_configs, key=["n_cols"], interpret=triton.Config({"BLOCK_N": 128}))
    return fused_configs, looped_configs, fused, looped


class Declared:
    """A Triton variant declared once: its setup (`setup(case, **inputs) -> Launcher`), description and
    source. `SUITE.add("triton", softmax.VARIANT)` registers it with the one Triton requirement
    (`missing_reason`), `compiled=True` and the `config` column; the tests find every registered Triton
    variant through `kernel.backend == "triton"`, and kernels/triton/aot.py compiles every module of this
    folder that defines `aot_specs()`."""
    backend = "triton"

    def __init__(self, setup, source: str, doc: str | None = None):
        self.setup = setup
        self.source = source
        self.doc = doc or (setup.__doc__ or "").strip().split("\n")[0]

    def variant_spec(self) -> dict:
        from harness.registry import Requires
        return dict(setup=self.setup, requires=Requires(check=missing_reason), compiled=True, config=config,
                    description=self.doc, kernel=self)


def declare(setup, module_file: str, doc: str | None = None) -> Declared:
    """`VARIANT = declare(setup, __file__)` at the end of a kernel module."""
    from pathlib import Path
    return Declared(setup, f"kernels/triton/{Path(module_file).name}", doc)
