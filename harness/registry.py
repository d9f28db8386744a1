"""The registry: what one suite file declares, in one place.

A suite declares its cases (odd test shapes apart from benchmark shapes), how to draw inputs from a seed,
the work of a case (FLOPs and bytes), a float64 reference with tolerances per dtype, and its variants. A
variant is a setup function `setup(case, **inputs) -> launcher`: everything outside the launcher (packing,
compiling, allocating) stays out of the timed region. See docs/CONTRACTS.md §1.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
    "int8": torch.int8,             # the AMX int8 peak probe (suites/peak.py)
}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
                 "f16": "float16", "fp64": "float64", "double": "float64"}
MODES = ("test", "quick", "full", "shape")   # "shape": the command line's --shape cases


class Skip(Exception):
    """Raised by a setup function for a case its variant does not support: the row becomes `skipped`."""


class UsageError(Exception):
    """Bad input from the user: reported as one line with exit code 2."""


def dtype_name(name: str) -> str:
    return DTYPE_ALIASES.get(name, name)


class Case:
    """One case of a suite on one device and dtype. Parameters are attributes: `case.rows`."""

    def __init__(self, suite: str, params: Mapping[str, Any], device: str = "cpu", dtype: str = "float32",
                 name: str | None = None):
        self.suite = suite
        self.params = dict(params)
        self.device = device
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self.name = name or ",".join(f"{k}={_fmt(v)}" for k, v in self.params.items())

    def __getattr__(self, key: str) -> Any:
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(f"case of suite {self.__dict__.get('suite')!r} has no parameter {key!r}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def poisoned(self, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """An output buffer filled with NaN, so that an element the kernel never writes fails the check."""
        return torch.full(tuple(shape), float("nan"), dtype=dtype or self.dtype, device=self.device)

    def with_(self, device: str | None = None, dtype: str | None = None) -> "Case":
        return Case(self.suite, self.params, device or self.device, dtype or self.dtype_name, self.name)

    def __repr__(self) -> str:
        return f"Case({self.suite}:{self.name} {self.device} {self.dtype_name})"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return str(v)


@dataclass(frozen=True)
class Requires:
    """What a variant needs; anything missing turns its rows into `skipped` with the reason."""
    devices: tuple[str, ...] = ("cpu", "cuda")
    min_cc: tuple[int, int] | None = None
    packages: tuple[str, ...] = ()
    dtypes: tuple[str, ...] | None = None
    check: Callable[[Case], str | None] | None = None

    def missing(self, case: Case) -> str | None:
        if case.device not in self.devices:
            return f"runs on {'/'.join(self.devices)} only"
        if self.dtypes is not None and case.dtype_name not in self.dtypes:
            return f"supports dtypes {', '.join(self.dtypes)} only"
        for pkg in self.packages:
            if importlib.util.find_spec(pkg) is None:
                return f"package {pkg!r} is not installed"
        if self.min_cc is not None:
            if case.device != "cuda":
                return f"needs a CUDA GPU of compute capability >= {self.min_cc[0]}.{self.min_cc[1]}"
            cc = torch.cuda.get_device_capability()
            if tuple(cc) < tuple(self.min_cc):
                return f"needs compute capability >= {self.min_cc[0]}.{self.min_cc[1]}, GPU has {cc[0]}.{cc[1]}"
        if self.check is not None:
            try:
                return self.check(case)
            except Exception as exc:  # a broken availability probe is a reason, not a crash
                return f"availability check failed: {type(exc).__name__}: {exc}"
        return None

    def describe(self) -> str:
        parts = ["/".join(self.devices)]
        if self.min_cc:
            parts.append(f"sm>={self.min_cc[0]}{self.min_cc[1]}")
        if self.packages:
            parts.append("+".join(self.packages))
        if self.dtypes:
            parts.append("dtypes " + ",".join(self.dtypes))
        if self.check is not None:
            parts.append(getattr(self.check, "__doc__", None) and self.check.__doc__.strip().splitlines()[0]
                         or getattr(self.check, "__qualname__", "check"))
        return ", ".join(parts)


ANY = Requires()


@dataclass
class Variant:
    name: str
    setup: Callable[..., Callable[[], Any]]
    requires: Requires = ANY
    compiled: bool = False
    config: Callable[[Callable[[], Any]], str] | None = None
    description: str = ""
    kernel: Any = None          # the declaration (kernels/native.py Kernel, kernels/triton/common.py Declared)


@dataclass
class Suite:
    name: str
    description: str
    baseline: str
    dtypes: tuple[str, ...] = ("float32",)
    tolerances: Mapping[str, tuple[float, float]] | Callable[[Case], Mapping[str, tuple[float, float]]] = \
        field(default_factory=dict)
    cold: bool = False                       # time with caches flushed between samples
    compute_class: str = "vector"            # "matmul": tensor-core/AMX ceiling of the dtype; "vector": fp32 FMA
    bandwidth: str = "copy"                  # "read": bytes held against the measured read (harness/peaks.py)
    default_dtype: Mapping[str, str] = field(default_factory=lambda: {"cpu": "float32", "cuda": "bfloat16"})
    case_name: Callable[[Mapping[str, Any]], str] | None = None
    after_run: Callable[[list[dict], str], None] | None = None   # (rows, mode): the peak suite stores its figures
    # (case, variant name) -> False leaves the pair out of the plan altogether (a probe with no torch form);
    # unlike a Requires check, which makes a `skipped` row.
    applies: Callable[[Case, str], bool] | None = None
    ref: str | None = None                   # "module:attribute" a worker process imports it by (set on load)
    # optional case parameters a --shape may set, with their allowed values (the first is the default)
    options: Mapping[str, tuple] = field(default_factory=dict)
    # Suites whose rows span ranks (collectives, train): `fn(world_size) -> reason | None`, the reason when the
    # suite cannot use that world size (bench.py: one line, exit 2). Under torchrun their rows run on every
    # rank in lockstep, in the rank's own process (harness/distributed.py). None: an ordinary per-device suite.
    distributed: Callable[[int], str | None] | None = None

    def __post_init__(self) -> None:
        self._cases: dict[str, list[dict]] = {m: [] for m in MODES}
        self.variants: dict[str, Variant] = {}
        self._inputs = self._flops = self._bytes = self._reference = None
        self._model_columns = None

    # ---- declarations -------------------------------------------------------------------------------
    def add_cases(self, mode: str, cases: Iterable[Mapping[str, Any]],
                  devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
        """Declare cases for a mode; `devices` limits them (GPU-sized shapes would take minutes on a CPU)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._cases[mode].extend((dict(c), tuple(devices)) for c in cases)

    def set_cases(self, mode: str, cases: Iterable[Mapping[str, Any]]) -> None:
        """Replace the cases of a mode (harness/shapes.py puts the --shape cases in mode "shape")."""
        self._cases[mode] = []
        self.add_cases(mode, cases)

    def inputs(self, fn):
        self._inputs = fn
        return fn

    def flops(self, fn):
        self._flops = fn
        return fn

    def bytes(self, fn):
        self._bytes = fn
        return fn

    def reference(self, fn):
        self._reference = fn
        return fn

    def model_columns(self, fn):
        """Model-level suites: `fn(case, launcher, row) -> dict` of MODEL_COLUMNS (docs/CONTRACTS.md §5),
        called after a row is timed, with the timed launcher and the row so far (median, telemetry)."""
        self._model_columns = fn
        return fn

    def row_model_columns(self, case: Case, launcher, row: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._model_columns(case, launcher, row)) if self._model_columns else {}

    def variant(self, name: str, *, requires: Requires = ANY, compiled: bool = False,
                config: Callable | None = None, description: str = "", kernel: Any = None):
        if name in self.variants:
            raise ValueError(f"suite {self.name}: variant {name!r} registered twice")

        def register(fn):
            self.variants[name] = Variant(name, fn, requires, compiled, config,
                                          description or (fn.__doc__ or "").strip().split("\n")[0], kernel)
            return fn
        return register

    def add(self, name: str, kernel: Any, **overrides) -> Variant:
        """Register a declared kernel as a variant in one line: `SUITE.add("cpp", cpp.SOFTMAX)`. The
        declaration (kernels/native.py, kernels/triton/common.py) gives the setup, requirements, description."""
        spec = {**kernel.variant_spec(), **overrides}
        setup = spec.pop("setup")
        self.variant(name, **spec)(setup)
        return self.variants[name]

    # ---- use ------------------------------------------------------------------------------------------
    def cases(self, mode: str, device: str = "cpu", dtype: str = "float32") -> list[Case]:
        return [Case(self.name, p, device, dtype, self.case_name(p) if self.case_name else None)
                for p, devices in self._cases[mode] if device in devices]

    def make_inputs(self, case: Case, seed: int) -> dict[str, Any]:
        gen = torch.Generator(device=case.device)
        gen.manual_seed(seed)
        return self._inputs(case, gen)

    def work(self, case: Case) -> tuple[float, float]:
        return float(self._flops(case)), float(self._bytes(case))

    def tolerance(self, case: Case) -> tuple[float, float]:
        tol = self.tolerances(case) if callable(self.tolerances) else self.tolerances
        if case.dtype_name not in tol:
            raise KeyError(f"suite {self.name} declares no tolerance for {case.dtype_name}")
        return tol[case.dtype_name]

    def compute_reference(self, case: Case, inputs: Mapping[str, Any], ref_dtype: torch.dtype = torch.float64):
        up = {k: (v.to(ref_dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
              for k, v in inputs.items()}
        with torch.no_grad():
            return self._reference(case, **up)

    def check_complete(self) -> None:
        missing = [n for n, f in (("inputs", self._inputs), ("flops", self._flops), ("bytes", self._bytes),
                                  ("reference", self._reference)) if f is None]
        if missing:
            raise TypeError(f"suite {self.name} declares no {', '.join(missing)}")
        if self.baseline not in self.variants:
            raise TypeError(f"suite {self.name}: baseline {self.baseline!r} is not a variant")
        for d in self.dtypes:
            if not callable(self.tolerances) and d not in self.tolerances:
                raise TypeError(f"suite {self.name}: no tolerance for dtype {d}")


_SUITES: dict[str, Suite] = {}


def all_suites() -> dict[str, Suite]:
    """Import every module of suites/ and return its SUITE objects by name (sorted).

    `$KB_EXTRA_SUITES` (comma-separated module names, e.g. `tests.faulty_suite`) adds suites defined
    elsewhere: the tests register a suite of crashing and hanging variants this way."""
    if not _SUITES:
        import suites as pkg
        names = [f"suites.{m.name}" for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name)
                 if not m.name.startswith("_")]
        names += [n.strip() for n in os.environ.get("KB_EXTRA_SUITES", "").split(",") if n.strip()]
        for name in names:
            module = importlib.import_module(name)
            suite = getattr(module, "SUITE", None)
            if isinstance(suite, Suite):
                suite.check_complete()
                suite.ref = suite.ref or f"{name}:SUITE"
                _SUITES[suite.name] = suite
    return dict(_SUITES)


# A name that stands for several suites (`--suite norm` ran RMSNorm and LayerNorm before they were split).
ALIASES: dict[str, tuple[str, ...]] = {"norm": ("rmsnorm", "layernorm")}


def get_suite(name: str) -> Suite:
    suites = all_suites()
    if name not in suites:
        raise UsageError(f"unknown suite {name!r}; choose from: {', '.join(suites)}, {', '.join(ALIASES)}, all")
    return suites[name]


def get_suites(name: str) -> list[Suite]:
    """The suite called `name`, or the suites an alias stands for."""
    return [get_suite(n) for n in ALIASES[name]] if name in ALIASES else [get_suite(name)]
