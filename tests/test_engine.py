"""The serving engine (inference/engine.py, inference/scheduler.py, inference/requests.py): the paged forward
against the HF forward, greedy output under any interleaving and preemption against each request run alone,
the step budget, cancellation and block accounting, the detokenizer (UTF-8, stop strings)."""
import random
import threading

import pytest
import torch

from inference.engine import Engine, PagedLlama, cpp_decode_reason
from inference.requests import Detokenizer, QueueFull, RequestError, SamplingParams
from inference.scheduler import Request, Scheduled, Scheduler


@pytest.fixture(scope="module")
def lm():
    """The tiny model's architecture (head dim 64, 2 query heads on 1 kv head, 256 positions) with random weights,
    drawn wider than HF's init (std 0.2) so the next-token distribution is peaked: greedy ties are rare."""
    from transformers import LlamaForCausalLM

    from models.configs import TINY
    from models.zoo import LM
    torch.manual_seed(0)
    cfg = TINY.config()
    cfg.initializer_range = 0.2
    return LM("tiny-random", LlamaForCausalLM(cfg).eval(), TINY.context)


DECODES = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    bool(cpp_decode_reason(64, 2, 1)), reason=f"C++ decode kernel: {cpp_decode_reason(64, 2, 1)}"))]


def prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


def hf_greedy(lm, ids, n):
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def audit_empty(engine):
    engine.cache.manager.audit()
    assert engine.cache.manager.allocator.num_free == engine.cache.num_blocks, "blocks leaked"
    assert not engine.cache.manager.seqs and not engine.scheduler.has_work()


# ---- the forward ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decode", DECODES)
@pytest.mark.parametrize("n,chunk", [(1, 1), (127, 127), (129, 37), (129, 16)])
def test_forward_matches_hf_logits(lm, decode, n, chunk):
    """Prefill in chunks (each chunk attends to itself causally and to the earlier pages), then 3 decode steps;
    every position's logits against the HF forward of the whole sequence (float32)."""
    model = PagedLlama(lm.model, num_blocks=16, block_size=16, decode=decode)
    ids = prompt(n + 3, n)
    sid = model.cache.add()
    req = Request(handle=None, prompt=ids, detok=None, seq_id=sid)
    got = []
    pos = 0
    while pos < len(ids):
        m = min(chunk, n - pos) if pos < n else 1
        slots = model.cache.reserve(sid, m)
        got.append(model.forward([Scheduled(req, pos, ids[pos:pos + m], slots)], all_logits=True))
        pos += m
    with torch.no_grad():
        want = lm.model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(torch.cat(got), want, atol=2e-4, rtol=1e-4)
    model.cache.free(sid)
    model.cache.manager.audit()


def test_batched_step_matches_separate_steps(lm):
    """Decode rows of 3 sequences and the prefill chunks of 2 others in ONE step: the same logits as each alone."""
    model = PagedLlama(lm.model, num_blocks=40, block_size=16, decode="torch")
    lens = [5, 33, 17, 60, 2]
    reqs = []
    for i, n in enumerate(lens):
        sid = model.cache.add()
        reqs.append(Request(handle=None, prompt=prompt(n + 20, 100 + i), detok=None, seq_id=sid))
    alone = []
    for r, n in zip(reqs, lens):                  # sequences 0-2 prefilled, 3-4 half-prefilled
        done = n if len(alone) < 3 else n // 2
        model.forward([Scheduled(r, 0, r.prompt[:done], model.cache.reserve(r.seq_id, done))])
        r.computed = done
        alone.append(done)
    plan = [Scheduled(r, r.computed, r.prompt[r.computed:r.computed + (1 if i < 3 else 9)],
                      model.cache.reserve(r.seq_id, 1 if i < 3 else 9)) for i, r in enumerate(reqs)]
    batched = model.forward(plan, all_logits=True)
    with torch.no_grad():
        want = torch.cat([lm.model(torch.tensor([r.prompt[:s.start + len(s.ids)]])).logits[0, s.start:]
                          for r, s in zip(reqs, plan)])
    torch.testing.assert_close(batched, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("decode", DECODES)
def test_greedy_equals_hf_generate(lm, decode):
    eng = Engine(lm, num_blocks=64, decode=decode)
    prompts = [prompt(n, n) for n in (1, 127, 129)]
    outs = eng.generate(prompts, SamplingParams(max_tokens=12))
    assert outs == [hf_greedy(lm, p, 12) for p in prompts]
    audit_empty(eng)


# ---- scheduling -------------------------------------------------------------------------------------------------
def _watch(engine, budget, max_seqs, log):
    """Wrap the scheduler: after each plan, the budget, the batch bound and decode-before-prefill hold."""
    inner = engine.scheduler.schedule

    def schedule():
        plan = inner()
        n = sum(len(s.ids) for s in plan)
        assert n <= budget, f"step computes {n} tokens, budget {budget}"
        assert len(engine.scheduler.running) <= max_seqs
        assert all(s.req.seq_id is not None for s in plan)
        log.append(plan)
        engine.cache.manager.audit()
        return plan
    engine.scheduler.schedule = schedule


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_interleaving_and_preemption_keep_greedy_output(lm, preemption):
    """16 requests of odd lengths arriving over time into a pool too small for them (14 blocks of 8 tokens),
    a 24-token budget and at most 5 running: each one's greedy tokens equal the request run alone."""
    rng = random.Random(7)
    reqs = [(prompt(rng.choice([1, 3, 15, 16, 17, 31, 47, 63]), 500 + i), rng.choice([1, 5, 13, 29, 41]))
            for i in range(16)]
    alone = Engine(lm, num_blocks=64, decode="torch")
    want = [alone.generate([p], SamplingParams(max_tokens=m))[0] for p, m in reqs]
    eng = Engine(lm, num_blocks=14, block_size=8, max_num_seqs=5, max_tokens_per_step=24, max_queue=100,
                 preemption=preemption, decode="torch")
    log = []
    _watch(eng, 24, 5, log)
    outs = [[] for _ in reqs]
    done = []
    pending = list(enumerate(reqs))
    while pending or eng.scheduler.has_work():
        for _ in range(rng.choice([0, 0, 1, 2])):               # arrivals between steps
            if pending:
                i, (p, m) = pending.pop(0)
                eng.submit(p, SamplingParams(max_tokens=m),
                           lambda ev, i=i: (ev.token is not None and outs[i].append(ev.token),
                                            ev.finished and done.append(i)))
        eng.step()
    assert outs == want
    assert sorted(done) == list(range(16))
    assert eng.scheduler.preempted_total > 0, "the pool was meant to force preemption"
    assert eng.metrics.preemptions._value.get() == eng.scheduler.preempted_total
    assert any(len({id(s.req) for s in plan}) >= 3 for plan in log), "never batched 3 sequences in a step"
    assert any(any(len(s.ids) > 1 for s in plan) and any(len(s.ids) == 1 for s in plan) for plan in log), \
        "never mixed a prefill chunk with decodes"
    audit_empty(eng)


class _Cache:
    """Just enough of PagedKVCache for the scheduler (a real BlockManager, no tensors)."""
    def __init__(self, num_blocks, bs=4):
        from inference.allocator import BlockManager
        self.manager = BlockManager(num_blocks, bs)
        self.num_blocks, self.block_size, self.num_layers = num_blocks, bs, 1

    def add(self):
        return self.manager.add()

    def free(self, sid):
        self.manager.free(sid)

    def reserve(self, sid, n, as_list=False):
        return self.manager.reserve_list(sid, n)[0] if as_list else self.manager.reserve(sid, n)[0]


def _req(n, out=0):
    return Request(handle=None, prompt=list(range(n)), detok=None, output=list(range(out)))


def test_scheduler_plan_order_budget_and_newest_preempted_first():
    cache = _Cache(num_blocks=6, bs=4)
    s = Scheduler(cache, max_num_seqs=3, max_tokens_per_step=10)
    a, b, c = _req(8), _req(7), _req(9)
    for r in (a, b, c):
        s.add(r)
    plan = s.schedule()                                 # admission FCFS: a 8, b 2 (budget 10)
    assert [(p.req, len(p.ids)) for p in plan] == [(a, 8), (b, 2)]
    a.output.append(1)                                  # a sampled: it decodes next
    plan = s.schedule()                                 # decode a (1), prefill b (5 left), admit c (4 of 9)
    assert [(p.req, len(p.ids)) for p in plan] == [(a, 1), (b, 5), (c, 4)]
    assert sum(len(p.ids) for p in plan) == 10
    # blocks: a 3 (9 tokens), b 2 (7), c 1 (4) = 6 of 6. Both a and b sampled and decode; c finds no room
    a.output.append(1)
    b.output.append(1)
    plan = s.schedule()                                 # a 9 -> 10 and b 7 -> 8 fit in their blocks
    assert [(p.req, len(p.ids)) for p in plan] == [(a, 1), (b, 1)]
    assert s.running == [a, b, c] and not s.waiting     # c waits for room without preempting its elders
    for _ in range(2):                                  # a 10 -> 11 -> 12; b's 9th token needs a 3rd block
        a.output.append(1)
        b.output.append(1)
        plan = s.schedule()
        assert [(p.req, len(p.ids)) for p in plan] == [(a, 1), (b, 1)]
    assert s.running == [a, b] and list(s.waiting) == [c]     # the newest, c, was preempted for b
    assert c.computed == 0 and c.seq_id is None and s.preempted_total == 1
    a.output.append(1)
    b.output.append(1)
    plan = s.schedule()                                 # a's 13th token needs a block: b (now the newest) goes
    assert [p.req for p in plan] == [a] and s.running == [a] and list(s.waiting) == [b, c]
    assert b.seq_id is None, "a preempted request was readmitted in the step that preempted it"
    assert s.preempted_total == 2
    cache.manager.audit()


def test_scheduler_preempts_the_newest_then_itself():
    cache = _Cache(num_blocks=5, bs=4)
    s = Scheduler(cache, max_num_seqs=4, max_tokens_per_step=16)
    a, b, c, d = (_req(4) for _ in range(4))
    for r in (a, b, c, d):
        s.add(r)
    assert [len(p.ids) for p in s.schedule()] == [4, 4, 4, 4]   # 4 full blocks, 1 free
    for r in (a, b, c, d):
        r.output.append(1)
    plan = s.schedule()     # a takes the free block; b needs one: d (newest) goes; c needs one: no newer, c goes
    assert [p.req for p in plan] == [a, b]
    assert s.running == [a, b] and list(s.waiting) == [c, d]
    cache.manager.audit()


def test_queue_bound_and_refusals(lm):
    eng = Engine(lm, num_blocks=8, block_size=16, max_queue=2, decode="torch")
    sink = lambda ev: None  # noqa: E731
    eng.submit([1, 2], SamplingParams(max_tokens=3), sink)
    eng.submit([1, 2], SamplingParams(max_tokens=3), sink)
    with pytest.raises(QueueFull):
        eng.submit([1, 2], SamplingParams(max_tokens=3), sink)
    assert eng.metrics.value("rejected") == 1
    with pytest.raises(RequestError, match="maximum context length is 256"):
        eng.submit([1] * 250, SamplingParams(max_tokens=7), sink)
    with pytest.raises(RequestError, match="pool holds 128"):
        Engine(lm, num_blocks=8, block_size=16, decode="torch").submit([1] * 120, SamplingParams(max_tokens=9), sink)
    with pytest.raises(RequestError, match="empty"):
        eng.submit([], SamplingParams(max_tokens=3), sink)
    with pytest.raises(RequestError):
        SamplingParams(max_tokens=0)
    eng.run_until_idle()
    audit_empty(eng)


def test_cancel_mid_generation_frees_blocks(lm):
    eng = Engine(lm, num_blocks=32, decode="torch")
    events = {0: [], 1: [], 2: []}
    ps = [prompt(40, 1), prompt(70, 2), prompt(9, 3)]
    hs = [eng.submit(p, SamplingParams(max_tokens=30), events[i].append) for i, p in enumerate(ps)]
    for _ in range(6):
        eng.step()
    held = len(eng.cache.manager.seqs[eng._reqs[hs[1].rid].seq_id].blocks)
    assert held >= 5
    used = eng.scheduler.blocks_used
    eng.cancel(hs[1])
    eng.step()
    assert eng.scheduler.blocks_used <= used - held + 2      # its blocks are back (the others grew by <= 1 each)
    assert events[1][-1].finished and events[1][-1].finish_reason == "cancelled"
    assert eng.metrics.value("cancelled") == 1
    eng.run_until_idle()
    assert [e.token for e in events[0]] == hf_greedy(lm, ps[0], 30)
    assert events[0][-1].finish_reason == "length" and len(events[0]) == 30
    audit_empty(eng)


def test_sampling_is_seeded_and_independent_of_the_batch(lm):
    sp = SamplingParams(max_tokens=20, temperature=0.8, seed=11)
    alone = Engine(lm, num_blocks=32, decode="torch").generate([prompt(9, 5)], sp)[0]
    eng = Engine(lm, num_blocks=32, decode="torch")
    outs = eng.generate([prompt(30, 6), prompt(9, 5), prompt(3, 7)],
                        [SamplingParams(max_tokens=20, temperature=1.0, seed=1), sp, SamplingParams(max_tokens=5)])
    assert outs[1] == alone
    greedy = eng.generate([prompt(9, 5)], SamplingParams(max_tokens=20))[0]
    assert greedy != alone, "temperature 0.8 sampled exactly the greedy tokens: sampling not applied?"
    audit_empty(eng)


def test_engine_thread_streams_tokens_as_produced(lm):
    eng = Engine(lm, num_blocks=32, decode="torch").start()
    try:
        got, done = [], threading.Event()

        def sink(ev):
            got.append((ev.index, ev.token, ev.finished))
            if ev.finished:
                done.set()
        eng.submit(prompt(20, 9), SamplingParams(max_tokens=15), sink)
        assert done.wait(30)
        assert [g[0] for g in got] == list(range(15)) and [g[2] for g in got] == [False] * 14 + [True]
        assert [g[1] for g in got] == hf_greedy(lm, prompt(20, 9), 15)
    finally:
        eng.stop()
    audit_empty(eng)


def test_engine_thread_calls_step_done_after_each_step_that_emits(lm):
    """The server's hand-off hook: called by the engine thread once per step that produced events, after them
    (so the server can send that step's tokens before the next step runs), never on a step without events."""
    eng = Engine(lm, num_blocks=32, decode="torch")
    got, seen, done = [], [], threading.Event()
    eng.step_done = lambda: seen.append(len(got))

    def sink(ev):
        got.append(ev.index)
        if ev.finished:
            done.set()
    eng.start()
    try:
        eng.submit(prompt(20, 9), SamplingParams(max_tokens=15), sink)
        assert done.wait(30)
    finally:
        eng.stop()
    assert seen == list(range(1, 16)), f"step_done after {seen} events: want once after each of the 15 tokens"


# ---- detokenizer ------------------------------------------------------------------------------------------------
def _push_all(d, data):
    out = [d.push(b) for b in data]
    return out


def test_detokenizer_holds_partial_utf8():
    d = Detokenizer()
    text = "aé€😀b"
    out = _push_all(d, text.encode())
    assert "".join(out) == text
    assert out == ["a", "", "é", "", "", "€", "", "", "", "😀", "b"]
    d = Detokenizer()
    assert d.push(0xE2) == "" and d.flush() == "\ufffd"         # an incomplete sequence at the end


def test_detokenizer_stop_strings():
    d = Detokenizer(stop=("STOP", "xy"))
    out = _push_all(d, b"abSTOxSTOPzz")
    assert "".join(out) == "abSTOx" and d.stopped
    assert out[2:5] == ["", "", ""]                              # "STO" held back while it could become "STOP"
    d = Detokenizer(stop=("\n\n",))
    out = _push_all(d, b"one\ntwo\n\nthree")
    assert "".join(out) == "one\ntwo" and d.stopped
    d = Detokenizer(stop=("é",))
    assert "".join(_push_all(d, "aé".encode())) == "a" and d.stopped


def test_hf_static_counts_how_full_its_batches_stay(lm):
    """hf-static's occupancy counters (inference/hf_engines.py): a batch of rows wanting 1, 2, 3 and 8 tokens runs
    8 generate steps with 4, 3, 2, 1, 1, 1, 1, 1 rows still generating: 5 steps under half, 14 row-steps that
    generate and 18 computed for rows already done; serve_bench's sampler turns the deltas into row columns."""
    from inference.hf_engines import HFStaticEngine
    from inference.serve_bench import MetricsSampler
    eng = HFStaticEngine(lm, max_num_seqs=4)
    rows = [eng.submit(prompt(5 + i, i), SamplingParams(max_tokens=n), lambda ev: None).extra["row"]
            for i, n in enumerate([1, 2, 3, 8])]
    eng.run_batch(rows)
    assert eng.steps == 8 and [r.count for r in rows] == [1, 2, 3, 8]

    def v(counter, **label):
        return counter.labels(**label)._value.get()
    assert v(eng.static_steps, alive="under_half") == 5 and v(eng.static_steps, alive="half_or_more") == 3
    assert v(eng.static_rows, row="generating") == 14 and v(eng.static_rows, row="done") == 18
    s = MetricsSampler("http://unused")
    s.samples = [{g: 0.0 for g in s.GAUGES}]
    s.first = {'kbench_static_steps_total{alive="under_half"}': 1.0,
               'kbench_static_steps_total{alive="half_or_more"}': 2.0,
               'kbench_static_row_steps_total{row="generating"}': 10.0,
               'kbench_static_row_steps_total{row="done"}': 0.0}
    s.last = {k: s.first[k] + d for k, d in zip(s.first, (5.0, 3.0, 14.0, 18.0))}
    c = s.columns()
    assert c["server_static_steps"] == 8 and c["server_static_steps_under_half"] == 5 / 8
    assert c["server_static_row_util"] == 14 / 32
    s.first, s.last = {}, {}                                   # ours: no such counters, no figures
    assert all(c != c for c in (s.columns()[k] for k in ("server_static_steps_under_half", "server_static_row_util")))


def test_a_fallback_to_torch_decode_is_a_warning(lm, monkeypatch):
    """decode="auto" without the C++ kernel (no native build): the engine says so in one line (the server prints
    it, bench.py serve puts it in the rows' note); asked for torch, or on the C++ kernel: no warning."""
    import inference.engine as E
    monkeypatch.setattr(E, "cpp_decode_reason", lambda *a: "C++ kernels not built: run 'make build' (test)")
    eng = Engine(lm, num_blocks=8, decode="auto")
    assert eng.model.decode_kernel == "torch"
    assert eng.warning and "torch" in eng.warning and "not built" in eng.warning and "\n" not in eng.warning
    assert Engine(lm, num_blocks=8, decode="torch").warning is None
    monkeypatch.undo()
    if not cpp_decode_reason(64, 2, 1):
        assert Engine(lm, num_blocks=8, decode="auto").warning is None


def test_the_server_prints_the_fallback_warning_once(lm, monkeypatch, capsys):
    import inference.engine as E
    from inference import server
    monkeypatch.setattr(E, "cpp_decode_reason", lambda *a: "C++ kernels not built (test)")
    monkeypatch.setattr("models.zoo.load", lambda *a, **k: lm)
    server.build_engine(server.parse_args(["--engine", "ours", "--num-blocks", "16"]))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: ")]
    assert len(err) == 1 and "torch" in err[0] and "not built (test)" in err[0], err


def test_phase_counters_account_for_every_step(lm):
    """Engine.phase_s / kind_steps (scripts/serve_profile.py's breakdown, /metrics' kbench_engine_*): every step is
    counted once as decode-only or mixed (a prefill chunk in it), the phases' CPU seconds grow, the trace agrees."""
    from prometheus_client import generate_latest
    eng = Engine(lm, num_blocks=32, block_size=8, max_tokens_per_step=24, decode="torch")
    eng.trace = []
    eng.generate([prompt(40, 1), prompt(5, 2)], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    kinds = [k for k, *_ in eng.trace]
    assert len(kinds) == eng.steps == sum(eng.kind_steps.values())
    # 45 prompt tokens under a 24-token budget: at least two steps carry prefill, the rest decode one token each
    assert eng.kind_steps["mixed"] == kinds.count("mixed") >= 2 and eng.kind_steps["decode"] == kinds.count("decode") >= 4
    assert all(nt == ns for k, _, nt, ns in eng.trace if k == "decode")        # decode-only: one token a sequence
    assert all(nt > ns for k, _, nt, ns in eng.trace if k == "mixed")
    ph = eng.phases()["phase_s"]
    assert ph["forward_decode"] > 0 and ph["forward_mixed"] > 0 and ph["emit"] > 0 and ph["schedule"] > 0
    assert 0 < ph["prefill_attention"] <= ph["forward_mixed"]
    text = generate_latest(eng.metrics.registry).decode()
    assert f'kbench_engine_steps_total{{kind="mixed"}} {float(eng.kind_steps["mixed"])}' in text
    assert 'kbench_engine_phase_seconds_total{phase="forward_decode"}' in text
