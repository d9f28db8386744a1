"""One mechanism for every native kernel: the library loader, the dtype-code table and kernel declarations.

A native kernel is declared once, as a `Kernel`: its library and C entry point, the argument mapping from
the inputs and the case (a list of `Arg`s, each with its ctypes type), the output buffer, the dtypes and
requirements. Everything else is derived from the declaration:
- the ctypes binding: every declared entry point of a library gets its `argtypes` when the library loads;
- the registry setup function `kernel.setup(case, **inputs) -> launcher` (layout outside the launcher,
  the output from `case.poisoned`, one C call inside it);
- the variant: `SUITE.add("cpp", cpp.SOFTMAX)` registers setup, requirements and description in one line;
- the test tables: tests walk the suites' variants and take those whose `kernel.backend` is theirs.

One loader (`Library`) for libkb_cpp.so, libkb_cuda.so and libkb_cuda_sim.so: it looks in
`$KB_BUILD_DIR/lib` or `<repo>/build/lib` (an environment variable may name the file directly), never
raises on import, and reports the real reason a library cannot be used (file missing, the loader's own
error for a stale or foreign build, an entry point the build lacks) as the skip reason.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]

# The one dtype-code table of the C interfaces (docs/CONTRACTS.md §2).
DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class NativeError(RuntimeError):
    """A native entry point returned an error code (the message is the library's `*_last_error()`)."""


def dtype_code(t: torch.Tensor | torch.dtype) -> int:
    dt = t if isinstance(t, torch.dtype) else t.dtype
    if dt not in DTYPE_CODES:
        raise TypeError(f"the native kernels take float32, bfloat16 or float16, not {dt}")
    return DTYPE_CODES[dt]


def _skip(reason: str):
    from harness.registry import Skip
    raise Skip(reason)


def build_dir() -> Path:
    return Path(os.environ["KB_BUILD_DIR"]) if os.environ.get("KB_BUILD_DIR") else ROOT / "build"


# ---- the loader ----------------------------------------------------------------------------------------
class Loaded:
    """One loaded library: `dll` (ctypes), its device ("cpu" or "cuda") and `check(rc, what)`."""

    def __init__(self, library: "Library", path: Path, kernels=None):
        self.library = library
        self.path = Path(path)
        self.dll = ctypes.CDLL(str(self.path))
        self.device = library.device
        self.simulated = library.simulated
        err = getattr(self.dll, library.error_symbol)
        err.restype, err.argtypes = ctypes.c_char_p, []
        self._fns: dict[str, Any] = {}
        for kernel in library.kernels if kernels is None else kernels:   # every declared entry point, or these
            self.function(kernel)

    def function(self, kernel: "Kernel"):
        """The entry point with its argtypes from the declaration (AttributeError when the build lacks it)."""
        fn = self._fns.get(kernel.symbol)
        if fn is None:
            fn = getattr(self.dll, kernel.symbol)
            fn.restype, fn.argtypes = ctypes.c_int, [a.ctype for a in kernel.args]
            self._fns[kernel.symbol] = fn
        return fn

    def last_error(self) -> str:
        return (getattr(self.dll, self.library.error_symbol)() or b"").decode(errors="replace")

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise NativeError(f"{what} failed (code {rc}): {self.last_error()}")

    def stream(self):
        """The current CUDA stream for entry points that take one (None under the simulation and on CPUs)."""
        if self.device != "cuda":
            return None
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


class Library:
    """Where a native library is, whether it loads, and why not. Never raises on import.

    `load()` -> the cached `Loaded` or None; `reason()` -> None when it loaded, else why not (the file's
    path and the dynamic loader's own message); `require()` -> the `Loaded` or `Skip(reason)`;
    `bind(path)` loads another file (a sanitizer build, a simulation built elsewhere) uncached.
    """

    def __init__(self, name: str, *, device: str, error_symbol: str, hint: str, env_var: str | None = None,
                 simulated: bool = False, simulation: "Library | None" = None):
        self.name, self.device, self.error_symbol, self.hint = name, device, error_symbol, hint
        self.env_var, self.simulated, self.simulation = env_var, simulated, simulation
        self.kernels: list[Kernel] = []
        self._cache: dict[str, Loaded | str] = {}

    def path(self) -> Path:
        if self.env_var and os.environ.get(self.env_var):
            return Path(os.environ[self.env_var])
        return build_dir() / "lib" / f"lib{self.name}.so"

    def bind(self, path: str | os.PathLike, kernels=None) -> Loaded:
        """Another build of this library; `kernels`: bind only these (an older build, for an A/B of one kernel)."""
        return Loaded(self, Path(path), kernels)

    def _try(self) -> Loaded | str:
        p = self.path()
        key = str(p)
        if key not in self._cache:
            if not p.exists():
                self._cache[key] = f"{self.hint} ({p} not found)"
            else:
                try:
                    self._cache[key] = Loaded(self, p)
                except AttributeError as exc:     # an entry point declared here is missing from the build
                    self._cache[key] = f"lib{self.name}.so is stale, rebuild it ('make build'): {p}: {exc}"
                except OSError as exc:            # the dynamic loader's reason: ELF class, undefined symbol...
                    self._cache[key] = f"lib{self.name}.so is built but not loadable (rebuild: 'make build'): {exc}"
        return self._cache[key]

    def load(self) -> Loaded | None:
        got = self._try()
        return got if isinstance(got, Loaded) else None

    def reason(self) -> str | None:
        got = self._try()
        return None if isinstance(got, Loaded) else got

    def require(self) -> Loaded:
        got = self._try()
        if isinstance(got, str):
            _skip(got)
        return got

    def for_case(self, case) -> Loaded:
        """The library that runs `case`: this one, or its simulation for CPU cases of a GPU library."""
        if self.simulation is not None and getattr(case, "device", self.device) != self.device:
            return self.simulation.for_case(case)
        return self.require()


# ---- argument mapping -------------------------------------------------------------------------------------
class Ctx:
    """What an `Arg` reads: the (laid out) tensors by name, `out`, the case, the loaded library."""

    def __init__(self, case, tensors: Mapping[str, Any], lib: Loaded):
        self.case, self.tensors, self.lib = case, dict(tensors), lib

    def __getitem__(self, name: str) -> Any:
        if name in self.tensors and self.tensors[name] is not None:
            return self.tensors[name]
        if self.case is not None and hasattr(self.case, "get") and name in getattr(self.case, "params", {}):
            return self.case.get(name)
        raise KeyError(f"no input or case parameter {name!r}")


@dataclass(frozen=True)
class Arg:
    """One C argument: its ctypes type and how to compute it; `late` ones are computed at every call."""
    ctype: Any
    get: Callable[[Ctx], Any]
    late: bool = False


def ptr(name: str) -> Arg:
    return Arg(ctypes.c_void_p, lambda c: c[name].data_ptr())


def size(name: str, dim: int) -> Arg:
    return Arg(ctypes.c_int64, lambda c: c[name].shape[dim])


def stride(name: str, dim: int) -> Arg:
    return Arg(ctypes.c_int64, lambda c: c[name].stride(dim))


def strides(name: str, dims: Sequence[int]) -> list[Arg]:
    return [stride(name, d) for d in dims]


def dtype(name: str) -> Arg:
    return Arg(ctypes.c_int, lambda c: dtype_code(c[name]))


def f32(get: Callable[[Ctx], float] | str) -> Arg:
    return Arg(ctypes.c_float, (lambda c: float(c[get])) if isinstance(get, str) else get)


def i32(get: Callable[[Ctx], int] | str) -> Arg:
    return Arg(ctypes.c_int, (lambda c: int(c[get])) if isinstance(get, str) else get)


def threads() -> Arg:
    return Arg(ctypes.c_int, lambda c: torch.get_num_threads())


def stream() -> Arg:
    return Arg(ctypes.c_void_p, lambda c: c.lib.stream(), late=True)


# ---- layouts (outside the timed region) ---------------------------------------------------------------------
def unit_last(t):
    """Unit stride along the last dimension, copying only when needed."""
    return t if t.stride(-1) == 1 else t.contiguous()


def rows(t):
    """A [rows, cols] view with unit column stride (a copy only if the layout needs it)."""
    return unit_last(t.reshape(-1, t.shape[-1]))


def contiguous(t):
    return t.contiguous()


def aligned16(t):
    """Last dim contiguous, other strides multiples of 16 bytes, data 16-byte aligned (cp.async, vector loads)."""
    vec = 16 // t.element_size()
    ok = t.stride(-1) == 1 and all(s % vec == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0
    return t if ok else t.clone(memory_format=torch.contiguous_format)


# ---- the declaration --------------------------------------------------------------------------------------
@dataclass
class Kernel:
    """A native kernel, declared once (see the module docstring and docs/CONTRACTS.md §2)."""
    lib: Library
    symbol: str                                   # C entry point
    args: list[Arg]                               # its arguments, in order
    out: Callable[..., Any]                       # out(case, **inputs) -> shape, or (shape, torch dtype)
    doc: str                                      # one line: the variant's description
    backend: str                                  # "cpp" | "cuda": which tests and reports take it
    source: str                                   # the kernel file, relative to the repository
    layout: Mapping[str, Callable] = field(default_factory=dict)   # per input (and "out"): a layout function
    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu",)
    min_cc: tuple[int, int] | None = None
    available: Callable[[Any], str | None] | None = None          # library-wide check (CPU ISA, CUDA driver)
    unsupported: Callable[..., str | None] | None = None          # (case, **inputs) -> why not, for this case

    def __post_init__(self) -> None:
        self.args = [a for a in _flatten(self.args)]
        self.lib.kernels.append(self)
        if self.lib.simulation is not None:        # the simulation exports the same entry points
            self.lib.simulation.kernels.append(self)

    @property
    def name(self) -> str:
        return self.symbol.split("_", 2)[-1]

    def requires(self):
        from harness.registry import Requires
        return Requires(devices=self.devices, min_cc=self.min_cc, dtypes=self.dtypes, check=self.missing)

    def missing(self, case=None) -> str | None:
        """The library built (make build), and what the kernel needs from the machine."""
        if self.available is not None:
            why = self.available(case)
            if why:
                return why
        lib = self.lib.simulation if (self.lib.simulation is not None and case is not None
                                      and case.device != self.lib.device) else self.lib
        return lib.reason()

    def variant_spec(self) -> dict[str, Any]:
        """What `Suite.add` registers: the derived setup, the requirements and the description."""
        return dict(setup=self.setup, requires=self.requires(), description=self.doc, kernel=self)

    def bind(self, lib: Loaded, case, tensors: Mapping[str, Any], out) -> Callable[[], Any]:
        """A zero-argument call making one C call on `tensors` (laid out) into `out`; returns `out`."""
        laid = {k: (self.layout[k](v) if k in self.layout and v is not None else v) for k, v in tensors.items()}
        laid["out"] = self.layout["out"](out) if "out" in self.layout else out
        for k, v in laid.items():
            if isinstance(v, torch.Tensor) and v.device.type != lib.device:
                raise NativeError(f"{lib.path.name} takes {lib.device} tensors, got {k!r} on {v.device}")
        ctx = Ctx(case, laid, lib)
        values = [None if a.late else a.get(ctx) for a in self.args]
        late = [(i, a) for i, a in enumerate(self.args) if a.late]
        fn, check, symbol = lib.function(self), lib.check, self.symbol

        def call():
            vals = values
            if late:
                vals = list(values)
                for i, a in late:
                    vals[i] = a.get(ctx)
            rc = fn(*vals)
            if rc:
                check(rc, symbol)
            return out
        call.keep = laid            # the tensors behind the pointers live as long as the call
        return call

    def setup(self, case, **inputs) -> Callable[[], Any]:
        """The registry setup: checks, layout and the poisoned output outside the launcher."""
        if self.unsupported is not None:
            why = self.unsupported(case, **inputs)
            if why:
                _skip(why)
        lib = self.lib.for_case(case)
        spec = self.out(case, **inputs)
        shape, dt = spec if (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], torch.dtype)) \
            else (spec, None)
        return self.bind(lib, case, inputs, case.poisoned(shape, dt))

    def __call__(self, lib: Loaded | None = None, case=None, **tensors):
        """Direct call on tensors (tests): `cpp.SOFTMAX(x=x, out=out)`; parameters as keywords."""
        out = tensors.pop("out")
        return self.bind(lib or self.lib.require(), case, tensors, out)()


def top_left_causal_only(case) -> str | None:
    """For attention kernels that mask top-left only: why a bottom-right causal case is not theirs."""
    if (case is not None and case.get("causal") and case.get("causal_align", "top-left") == "bottom-right"
            and case.get("sq") != case.get("sk")):
        return "implements the top-left causal alignment only (causal_align=bottom-right with sq != sk)"
    return None


def _flatten(items):
    for a in items:
        if isinstance(a, (list, tuple)):
            yield from _flatten(a)
        else:
            yield a
