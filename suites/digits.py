"""The digits classifier (models/digits.py: an MLP 64 -> 128 -> 128 -> 10 on scikit-learn's 8x8 digits) as
deployed: eager PyTorch against ONNX Runtime (and TensorRT on GPUs) on the same exported graph.

Cases `b{b}`: one forward over b images (real test-split images at seeded random indices, never zeros).
Correctness: logits against the model run in float64 (the float32 variants meet the float32 tolerance).
Quality: each row's `quality_*` columns give the variant's accuracy on the 450 test images against eager's.
Work: 2 FLOPs per weight per image (25,856 weights; biases and ReLU are noise); bytes: the 26,122 float32
parameters once per call plus 64 inputs and 10 logits per image. At b = 1 the call is ~52 KFLOP: launch and
framework overhead, not arithmetic, is what these rows compare.
"""
from __future__ import annotations

import torch

from deploy import variants as deploy
from harness.registry import Requires, Suite

SUITE = Suite(
    name="digits",
    description="the digits MLP classifier deployed: eager PyTorch, ONNX Runtime, TensorRT",
    baseline="eager",
    dtypes=("float32",),
    tolerances={"float32": (1e-4, 1e-4)},
    compute_class="matmul",
    case_name=lambda p: f"b{p['b']}",
)
SUITE.add_cases("test", [dict(b=1), dict(b=127)])
SUITE.add_cases("quick", [dict(b=1), dict(b=64), dict(b=450)])
SUITE.add_cases("full", [dict(b=1), dict(b=64), dict(b=450), dict(b=4096)])

WEIGHTS = 64 * 128 + 128 * 128 + 128 * 10
PARAMS = WEIGHTS + 128 + 128 + 10


@SUITE.inputs
def make_inputs(case, rng):
    from models import digits
    x, _ = digits.test_split()
    idx = torch.randint(0, len(x), (case.b,), generator=rng, device=rng.device).cpu()
    return {"x": x[idx].to(case.device, case.dtype)}


@SUITE.flops
def flops(case):
    return 2 * WEIGHTS * case.b


@SUITE.bytes
def nbytes(case):
    return 4 * PARAMS + case.itemsize * case.b * (64 + 10)


@SUITE.reference
def reference(case, x):
    return _float64_model(x.device)(x)


_F64: dict[str, torch.nn.Module] = {}


def _float64_model(device) -> torch.nn.Module:
    key = str(device)
    if key not in _F64:
        import copy
        _F64[key] = copy.deepcopy(deploy.digits_model()).to(device, torch.float64).eval()
    return _F64[key]


@SUITE.variant("eager", config=deploy.config_of)
def eager(case, x):
    """the float32 model in eager PyTorch"""
    model = deploy.digits_model().to(case.device)

    def run():
        with torch.no_grad():
            return model(x)
    return deploy.Call(run, f"torch={torch.__version__},threads={torch.get_num_threads()}", forward=model)


ORT = Requires(check=deploy.ort_reason())
SUITE.variant("onnxruntime", requires=ORT, config=deploy.config_of)(deploy.ort_digits_setup())
SUITE.variant("ort_tensorrt", requires=Requires(check=deploy.ort_reason("tensorrt")),
              config=deploy.config_of)(deploy.ort_digits_setup("tensorrt"))


@SUITE.model_columns
def model_columns(case, launcher, row):
    """Accuracy of the variant's model on the 450 test images (the eager float32 model's as the reference)."""
    from models import digits, evaluate
    cols = dict(model="digits", tokens_per_s=None, ms_per_token=None, peak_mem_mb=None, energy_per_token_j=None)
    forward = getattr(launcher, "forward", None)
    if forward is None:
        return cols
    x, y = digits.test_split()
    with torch.no_grad():
        value = float((forward(x.to(case.device)).argmax(-1).cpu() == y).float().mean())
    ref = evaluate.accuracy(deploy.digits_model().cpu(), x, y)
    return {**cols, "quality_metric": "test_accuracy", "quality_value": value, "quality_ref": ref,
            "quality_delta": value - ref}
