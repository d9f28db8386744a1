"""One training step of the models/ language model (forward, backward, optimizer): tokens/s and MFU, in a
single process, and data-parallel under torchrun with DDP and FSDP2 (`torch.distributed.fsdp.fully_shard`).

The model is the byte-level Llama of models/configs.py (`test`, `tiny`, `small`), built untrained from a
seeded initialisation (nothing is trained or cached here). A case is a *global* batch of `batch` sequences
of `seq` + 1 bytes; under torchrun each of the n ranks takes `batch / n` of them (so n must divide the
batch: another world size is refused with one line, exit 2). Optimizer: AdamW (lr 1e-3), as models/train.py.

Work (PaLM appendix B, as models/train.py counts it): 6 N FLOPs per token for the N parameters plus
12 * layers * seq * hidden for attention, times the global batch's tokens, divided by n: `flops` is this
rank's share, so the runner's `% peak` (compute-bound: see `nbytes`) is the model FLOPs utilization
against the device's matmul ceiling of the dtype (harness/peaks.py). `tokens_per_s` is the job's: global
tokens per step / the step's median time.

Correctness: the launcher's first call returns the global loss and the full gradients after backward,
flattened (the all-reduce of DDP and the reduce-scatter of FSDP2 included; FSDP2's shards are gathered for
that first call only), compared with one float64 step of the same initial weights on the whole global batch
in one process: 2 ranks must match 1 rank within the tolerance. Later (timed) calls return the local loss;
they do not gather anything a training step would not. `quality_value` is the first timed step's global loss,
`quality_ref` the float64 loss of the same weights and batch.

`deepspeed_zero2`: DeepSpeed ZeRO stage 2, where deepspeed is installed and a GPU is present; skipped with
the reason otherwise (it has not run on this project's machines).
"""
from __future__ import annotations

import torch

from harness import distributed
from harness.registry import Requires, Skip, Suite

LR = 1e-3


def _batches() -> set[int]:
    return {params["batch"] for mode in SUITE._cases.values() for params, _ in mode}


def _world_ok(world: int) -> str | None:
    bad = sorted(b for b in _batches() if b % world)
    if bad:
        return f"the global batch ({', '.join(map(str, bad))} sequences) must split evenly over the ranks"
    return None


SUITE = Suite(
    name="train",
    description="one training step of the models/ LM (fwd, bwd, AdamW): tokens/s, MFU; single, DDP, FSDP2",
    baseline="single",
    dtypes=("float32", "bfloat16"),
    # against a float64 step: float32 loss and gradients (sums over 10^3-10^5 terms); bf16 autocast
    tolerances={"float32": (2e-5, 2e-3), "bfloat16": (5e-3, 5e-2)},
    compute_class="matmul",
    default_dtype={"cpu": "float32", "cuda": "bfloat16"},
    case_name=lambda p: f"{p['model']}-b{p['batch']}x{p['seq']}",
    distributed=_world_ok,
)
SUITE.add_cases("test", [dict(model="test", batch=4, seq=31)])
SUITE.add_cases("quick", [dict(model="tiny", batch=8, seq=64)], devices=("cpu",))
SUITE.add_cases("full", [dict(model="tiny", batch=16, seq=64), dict(model="test", batch=32, seq=64)], devices=("cpu",))
SUITE.add_cases("quick", [dict(model="small", batch=32, seq=512)], devices=("cuda",))
SUITE.add_cases("full", [dict(model="small", batch=32, seq=512), dict(model="small", batch=64, seq=512)],
                devices=("cuda",))


def _recipe(case):
    from models.configs import RECIPES
    return RECIPES[case.model]


def build_model(case, init_seed: int, dtype: torch.dtype = torch.float32):
    """The untrained model, the same weights wherever it is built with the same seed."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    cfg = _recipe(case).config("eager" if dtype == torch.float64 else "sdpa")
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, case.seq)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = LlamaForCausalLM(cfg)
    return model.to(dtype)


def _loss(model, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


@SUITE.inputs
def make_inputs(case, rng):
    tokens = torch.randint(0, 256, (case.batch, case.seq + 1), generator=rng, device=case.device)
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng, device=case.device).item())
    return {"tokens": tokens, "init_seed": init_seed}


def _n_params(case) -> int:
    r = _recipe(case)
    attn = r.hidden * r.hidden * 2 + 2 * r.hidden * (r.hidden // r.heads) * r.kv_heads     # q, o; k, v
    mlp = 3 * r.hidden * r.intermediate
    return r.layers * (attn + mlp + 2 * r.hidden) + 256 * r.hidden + r.hidden          # + norms, tied embedding


@SUITE.flops
def flops(case):
    r = _recipe(case)
    per_token = 6.0 * _n_params(case) + 12.0 * r.layers * case.seq * r.hidden
    return per_token * case.batch * case.seq / distributed.world()[1]          # this rank's share


@SUITE.bytes
def nbytes(case):
    # AdamW's pass over the parameters: read weight, gradient, m, v; write weight, m, v (float32): 28 B each.
    # Activations stay in cache-sized tiles at these sizes and are not counted; even so the step is far
    # compute-bound (6 N x tokens FLOPs against 28 N bytes), so `% peak` is the FLOPs utilization (MFU).
    return 28 * _n_params(case)


@SUITE.reference
def reference(case, tokens, init_seed):
    """One float64 step on the whole global batch in one process: [loss, every gradient flattened]."""
    model = build_model(case, init_seed, torch.float64).to(tokens.device)
    with torch.enable_grad():                 # the harness computes references under no_grad
        loss = _loss(model, tokens.long())
        loss.backward()
    return torch.cat([loss.detach().view(1)] + [p.grad.flatten() for p in model.parameters()]).cpu()


def _local(tokens: torch.Tensor) -> torch.Tensor:
    rank, world = distributed.world()
    return tokens.chunk(world)[rank].contiguous()


def _full_grads(model) -> list[torch.Tensor]:
    out = []
    for p in model.parameters():
        g = p.grad
        if hasattr(g, "full_tensor"):                     # FSDP2: a DTensor shard
            g = g.full_tensor()
        out.append(g.detach().float().flatten())
    return out


def _step_launcher(case, model, tokens, init_seed):
    """zero_grad, forward, backward (the wrapper's gradient sync), AdamW step. First call: the checked vector."""
    import contextlib
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95))
    local = _local(tokens)
    autocast = (torch.autocast(case.device, dtype=torch.bfloat16) if case.dtype == torch.bfloat16
                else contextlib.nullcontext())
    calls = [0]
    state: dict = {}
    inputs = {"tokens": tokens, "init_seed": init_seed}

    def launch():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = _loss(model, local)
        loss.backward()
        first = calls[0] == 0
        calls[0] += 1
        if first:                                         # before the step: the gradients of this batch
            state["loss"] = _global_mean(loss.detach())
            out = torch.cat([state["loss"].view(1).float()] + _full_grads(model))
            opt.step()
            return out
        opt.step()
        return loss.detach()
    launch.state, launch.inputs = state, inputs
    return launch


def _global_mean(loss: torch.Tensor) -> torch.Tensor:
    _, world = distributed.world()
    if world == 1:
        return loss
    import torch.distributed as dist
    t = loss.clone()
    dist.all_reduce(t)
    return t / world


def _single_only(case) -> str | None:
    """one process (no torchrun)"""
    if distributed.world()[1] > 1:
        return ("the single-process step is measured without torchrun (run bench.py --suite train alone); "
                "under torchrun the ranks run ddp and fsdp2")
    return None


def _ranks(case) -> str | None:
    """world_size >= 2 (torchrun)"""
    if distributed.world()[1] < 2:
        return "data parallelism needs world_size >= 2: run under torchrun --nproc-per-node 2 (or bench.py slurm)"
    return None


@SUITE.variant("single", requires=Requires(check=_single_only))
def single(case, tokens, init_seed):
    """one process, the whole global batch"""
    model = build_model(case, init_seed).to(case.device).train()
    return _step_launcher(case, model, tokens, init_seed)


@SUITE.variant("ddp", requires=Requires(check=_ranks))
def ddp(case, tokens, init_seed):
    """DistributedDataParallel: the batch split over the ranks, gradients all-reduced (averaged)"""
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = build_model(case, init_seed).to(case.device).train()
    wrapped = DDP(model, device_ids=[0] if case.device == "cuda" else None)
    launch = _step_launcher(case, wrapped, tokens, init_seed)
    return launch


@SUITE.variant("fsdp2", requires=Requires(check=_ranks))
def fsdp2(case, tokens, init_seed):
    """FSDP2 (fully_shard per decoder layer, then the root): parameters, gradients and AdamW state sharded"""
    from torch.distributed.fsdp import fully_shard
    model = build_model(case, init_seed).to(case.device).train()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return _step_launcher(case, model, tokens, init_seed)


def _deepspeed(case) -> str | None:
    """deepspeed + CUDA + torchrun"""
    import importlib.util
    if importlib.util.find_spec("deepspeed") is None:
        return "package 'deepspeed' is not installed (pip install deepspeed on a GPU machine)"
    if case.device != "cuda":
        return "DeepSpeed ZeRO runs on CUDA GPUs only"
    return _ranks(case)


@SUITE.variant("deepspeed_zero2", requires=Requires(check=_deepspeed))
def deepspeed_zero2(case, tokens, init_seed):
    """DeepSpeed ZeRO stage 2 (optimizer state and gradients partitioned), AdamW; untested here (no GPU)"""
    import deepspeed
    model = build_model(case, init_seed).to(case.device).train()
    _, world = distributed.world()
    config = {"train_micro_batch_size_per_gpu": case.batch // world, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2}, "bf16": {"enabled": case.dtype == torch.bfloat16},
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "betas": [0.9, 0.95]}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    local = _local(tokens)
    calls = [0]
    state: dict = {}

    def launch():
        loss = _loss(engine, local)
        engine.backward(loss)
        first = calls[0] == 0
        calls[0] += 1
        out = None
        if first:
            from deepspeed.utils import safe_get_full_grad
            state["loss"] = _global_mean(loss.detach())
            grads = [safe_get_full_grad(p) for p in engine.module.parameters()]
            if any(g is None for g in grads):
                raise Skip("DeepSpeed did not expose the full gradients before the step")
            out = torch.cat([state["loss"].view(1).float()] + [g.float().flatten() for g in grads])
        engine.step()
        return out if first else loss.detach()
    launch.state, launch.inputs = state, {"tokens": tokens, "init_seed": init_seed}
    return launch


@SUITE.model_columns
def train_columns(case, launcher, row):
    """tokens/s of the whole job, and the first timed step's global loss against its float64 reference."""
    cols = {"model": case.model}
    if row.get("median_ms"):
        cols["tokens_per_s"] = case.batch * case.seq / (row["median_ms"] / 1e3)
    loss = launcher.state.get("loss") if hasattr(launcher, "state") else None
    if loss is not None:
        cols.update(quality_metric="train_loss", quality_value=float(loss))
        inputs = getattr(launcher, "inputs", None)
        if inputs is not None:
            ref = float(reference(case, **inputs)[0])
            cols.update(quality_ref=ref, quality_delta=float(loss) - ref)
    return cols

