"""The fast STPN path against the reference loop: outputs, states, every gradient, gradcheck,
chunking, truncated BPTT / checkpointing, the automatic fallback and option validation.

Both fast backends run: the fused C loop (when a C compiler is present) and the batched torch
ops it falls back to; ``backend`` selects one by telling the dispatcher whether C is usable.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import warnings
import weakref

import pytest
import torch
from stpn_core import STPN, STPNLinear, STPNState
from stpn_core.stpn import backend_c

DOUBLE = torch.float64
K_TEST = 8
T_LONG = 2 * K_TEST + 5  # three checkpoint chunks of the C loop, the last one partial
BATCH = 11
"""The C loop runs samples in groups of 4 or 8 (float64 in 256- or 512-bit vectors) and the
rest one by one: 11 samples take both paths with either width."""


@pytest.fixture(autouse=True)
def small_checkpoint_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The smallest workspace budget: the C loop stores a memory every K_TEST steps."""
    monkeypatch.setattr(backend_c, "WORKSPACE_BYTES", 0)
    assert backend_c.recompute_interval(100, 4, 9, 8) == K_TEST

OPTIONS = {
    "default": {},
    "maze": {"norm_timing": "post", "clamp": 0.05},
    "scalar": {"per_synapse": False},
    "clamp_pre": {"clamp": 0.05},
    "prompt_decay": {"update": "prompt_decay", "clamp": 0.05},
    "current": {"presynaptic": "current", "activation": "sigmoid"},
    "no_norm_relu": {"norm": "none", "activation": "relu"},
    "identity_no_bias": {"activation": "identity", "bias": False},
    "scalar_post_current": {"per_synapse": False, "norm_timing": "post", "presynaptic": "current"},
}


@pytest.fixture(params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        if backend_c.library(DOUBLE) is None:
            pytest.fail("the C loop did not build; a C compiler (cc) is needed for this test")
    else:
        monkeypatch.setattr(backend_c, "usable", lambda *tensors: False)
    return request.param


def pair(cls: type[STPN], inputs: int = 5, **options: object) -> tuple[STPN, STPN]:
    """A fast and a reference module with the same parameters; Γ scaled up so the memory
    matters (and the clamp binds) within a few steps."""
    fast = cls(inputs, 4, implementation="fast", dtype=DOUBLE, **options)
    reference = cls(inputs, 4, implementation="reference", dtype=DOUBLE, **options)
    with torch.no_grad():
        fast.weight_gamma.mul_(300)
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def random_state(model: STPN, batch: int) -> STPNState:
    zero = model.initial_state(batch)
    return STPNState(
        torch.randn_like(zero.h).requires_grad_(),
        (0.3 * torch.randn_like(zero.F)).requires_grad_(),
        None,
    )


def loss_and_grads(model: STPN, x: torch.Tensor, state: STPNState | None):
    out, final = model(x, state)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    loss = (out * weights).sum() + 0.3 * final.F.square().sum() + 0.7 * final.h.sum()
    inputs = [*model.parameters(), x] + ([] if state is None else [state.h, state.F])
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs, strict=True)]
    return out, final, grads


def assert_close(got, want) -> None:
    """1e-10, and 1e-12 relative for the large values of an unnormalised layer (norm="none")."""
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-12)


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("cls", [STPN, STPNLinear])
@pytest.mark.parametrize("with_state", [False, True])
def test_fast_equals_reference(backend: str, name: str, cls: type[STPN], with_state: bool) -> None:
    assert_matches_reference(*pair(cls, **OPTIONS[name]), with_state)


def assert_matches_reference(fast: STPN, reference: STPN, with_state: bool) -> None:
    x = torch.randn(BATCH, T_LONG, fast.input_size, dtype=DOUBLE, requires_grad=True)
    state = random_state(fast, BATCH) if with_state else None
    out_f, final_f, grads_f = loss_and_grads(fast, x, state)
    out_r, final_r, grads_r = loss_and_grads(reference, x, state)
    assert_close(out_f, out_r)
    assert_close(final_f.h, final_r.h)
    assert_close(final_f.F, final_r.F)
    assert final_f.F_bias is None
    for got, want in zip(grads_f, grads_r, strict=True):
        assert_close(got, want)
    assert any(g.abs().max() > 0 for g in grads_f)


def test_parameter_grads_without_input_or_state_grads(backend: str) -> None:
    """The usual training call: neither ``x`` nor the state needs a gradient (the C backward
    then skips writing them); the parameters' gradients must not change."""
    fast, reference = pair(STPN, **OPTIONS["maze"])
    x = torch.randn(BATCH, T_LONG, 5, dtype=DOUBLE)
    zero = fast.initial_state(BATCH)
    state = STPNState(torch.randn_like(zero.h), 0.3 * torch.randn_like(zero.F), None)
    grads = []
    for model in (fast, reference):
        out, final = model(x, state)
        loss = out.square().sum() + final.F.sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for got, want in zip(*grads, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("used", ["outputs", "memory"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_a_loss_on_one_output_alone_matches_reference(backend: str, used: str, chunk) -> None:
    """Autograd hands the backward ``None`` for the output the loss does not use (the memory
    F_T in the usual training step, or the outputs); the backends take it as zero."""
    fast, reference = pair(STPN, **OPTIONS["maze"])
    fast.bptt_chunk = chunk
    x = torch.randn(BATCH, T_LONG, 5, dtype=DOUBLE, requires_grad=True)
    grads = []
    for model in (fast, reference):
        out, final = model(x)
        loss = out.square().sum() if used == "outputs" else final.F.square().sum()
        grads.append(torch.autograd.grad(loss, [*model.parameters(), x]))
    for got, want in zip(*grads, strict=True):
        assert_close(got, want)
    assert all(g.abs().max() > 0 for g in grads[0])


def test_inplace_change_of_output_is_caught(backend: str) -> None:
    """The backward reads the output buffer in place, so changing it must raise, not corrupt."""
    fast, _ = pair(STPN)
    out, _ = fast(torch.randn(2, 5, 5, dtype=DOUBLE))
    out.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()


@pytest.mark.parametrize("name", ["default", "maze", "current"])
def test_wide_rows_equal_reference(backend: str, name: str) -> None:
    """Rows of D = 16 (a multiple of backend_c.WIDE_ROWS) run on the 512-bit build."""
    assert (12 + 4) % backend_c.WIDE_ROWS == 0
    assert_matches_reference(*pair(STPN, 12, **OPTIONS[name]), with_state=True)


def test_outputs_are_freed_without_the_garbage_collector(backend: str) -> None:
    """No reference cycle through the autograd node: a training step's buffers are freed as
    soon as the caller drops them (a cycle held them until a garbage collection)."""
    fast, _ = pair(STPN)
    gc.disable()
    try:
        out, final = fast(torch.randn(2, 5, 5, dtype=DOUBLE))
        (out.sum() + final.F.sum()).backward()
        refs = [weakref.ref(out), weakref.ref(final.F)]
        del out, final
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()


def test_time_major_layout(backend: str) -> None:
    fast, reference = pair(STPN, norm_timing="post", clamp=0.05)
    fast.batch_first = reference.batch_first = False
    x = torch.randn(7, 3, 5, dtype=DOUBLE)
    assert_close(fast(x)[0], reference(x)[0])


@pytest.mark.parametrize("name", ["default", "maze"])
def test_two_calls_equal_one(backend: str, name: str) -> None:
    fast, _ = pair(STPN, **OPTIONS[name])
    x = torch.randn(2, 11, 5, dtype=DOUBLE, requires_grad=True)
    whole, state_whole = fast(x)
    first, state = fast(x[:, :4])
    second, state_split = fast(x[:, 4:], state)
    assert_close(torch.cat([first, second], dim=1), whole)
    assert_close(state_split.F, state_whole.F)
    g_whole = torch.autograd.grad(whole.sum() + state_whole.F.sum(), [fast.weight, x])
    g_split = torch.autograd.grad(
        first.sum() + second.sum() + state_split.F.sum(), [fast.weight, x]
    )
    for got, want in zip(g_split, g_whole, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("name", ["default", "maze", "scalar", "current"])
def test_gradcheck(backend: str, name: str) -> None:
    model = STPN(3, 2, implementation="fast", dtype=DOUBLE, **OPTIONS[name])
    with torch.no_grad():
        model.weight_gamma.mul_(100)
    names = [n for n, _ in model.named_parameters()]
    state = random_state(model, 5)  # a group of 4 samples and one alone

    def outputs(x, h, F, *values):
        # Parameters enter as plain inputs, so gradcheck perturbs them too.
        out, final = torch.func.functional_call(
            model, dict(zip(names, values, strict=True)), (x, STPNState(h, F, None))
        )
        return out, final.F

    params = (p.detach().clone().requires_grad_() for p in model.parameters())
    x = torch.randn(5, 4, 3, dtype=DOUBLE, requires_grad=True)
    assert torch.autograd.gradcheck(outputs, (x, state.h, state.F, *params), atol=1e-7)


def test_float32_close_to_float64(backend: str) -> None:
    model = STPN(6, 5, implementation="fast", norm_timing="post", clamp=1.0, dtype=DOUBLE)
    x = torch.randn(4, 30, 6, dtype=DOUBLE)
    want, _ = model(x)
    model32 = STPN(6, 5, implementation="fast", norm_timing="post", clamp=1.0)
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    got, _ = model32(x.float())
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_checkpointed_bptt_is_exact(implementation: str) -> None:
    plain, _ = pair(STPN, norm_timing="post", clamp=0.05)
    chunked = STPN(5, 4, implementation=implementation, bptt_chunk=3, norm_timing="post",
                   clamp=0.05, dtype=DOUBLE)
    chunked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 10, 5, dtype=DOUBLE, requires_grad=True)
    out_p, _, grads_p = loss_and_grads(plain, x, None)
    out_c, _, grads_c = loss_and_grads(chunked, x, None)
    assert_close(out_c, out_p)
    for got, want in zip(grads_c, grads_p, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
def test_truncated_bptt_stops_gradients_at_chunk_boundaries(implementation: str) -> None:
    model = STPN(5, 4, implementation=implementation, bptt_chunk=4, bptt_mode="truncate",
                 dtype=DOUBLE)
    plain = STPN(5, 4, implementation="reference", dtype=DOUBLE)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 10, 5, dtype=DOUBLE, requires_grad=True)
    out, final = model(x)
    expected_out, expected_final = plain(x)
    assert_close(out, expected_out)
    assert_close(final.F, expected_final.F)
    # By hand: the plain loop over the same chunks, detaching the state in between.
    state, pieces = None, []
    for t0 in range(0, 10, 4):
        if state is not None:
            state = STPNState(state.h.detach(), state.F.detach(), None)
        piece, state = plain(x[:, t0 : t0 + 4], state)
        pieces.append(piece)
    manual = torch.cat(pieces, dim=1)
    got = torch.autograd.grad(out.square().sum(), [x, *model.parameters()], retain_graph=True)
    want = torch.autograd.grad(manual.square().sum(), [x, *plain.parameters()])
    for g, w in zip(got, want, strict=True):
        assert_close(g, w)
    # The last output does not depend on inputs before its chunk.
    (grad_x,) = torch.autograd.grad(out[:, -1].sum(), [x])
    assert grad_x[:, :8].abs().max() == 0
    assert grad_x[:, 8:].abs().max() > 0


def test_unsupported_option_falls_back_with_one_warning() -> None:
    auto = STPN(5, 4, rule="oja", dtype=DOUBLE)
    reference = STPN(5, 4, rule="oja", implementation="reference", dtype=DOUBLE)
    reference.load_state_dict(auto.state_dict())
    x = torch.randn(2, 6, 5, dtype=DOUBLE)
    with pytest.warns(UserWarning, match='rule="oja"'):
        out, _ = auto(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto(x)  # warned once per module and reason
        reference(x)
    assert_close(out, reference(x)[0])


def test_supported_options_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        STPN(5, 4, norm_timing="post", clamp=1.0)(torch.randn(2, 3, 5))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"implementation": "fast", "rule": "oja"}, "implementation"),
        ({"implementation": "fast", "plastic_inputs": "hidden"}, "implementation"),
        ({"implementation": "compiled"}, "implementation"),
        ({"bptt_chunk": 0}, "bptt_chunk"),
        ({"bptt_mode": "sometimes"}, "bptt_mode"),
    ],
)
def test_bad_options_raise(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        STPN(5, 4, **options)


def test_bptt_chunk_type() -> None:
    with pytest.raises(TypeError, match="bptt_chunk"):
        STPN(5, 4, bptt_chunk=2.5)


def test_batch_split_across_threads_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C loop splits the batch across threads for large jobs; force it on a small one."""
    if backend_c.library(DOUBLE) is None:
        pytest.fail("the C loop did not build; a C compiler (cc) is needed for this test")
    monkeypatch.setattr(backend_c, "MIN_WORK_PER_THREAD", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        # The group build over 4 whole groups of 4 float64 samples (D = 9) on 3 threads (shares
        # of 1, 1 and 2 groups), then the one-sample build over the 3 left over on 3 threads.
        group, single = backend_c.libraries(DOUBLE, 9)
        assert backend_c._segments(19, 1, group, single) == ((group, 0, 16, 3), (single, 16, 19, 3))
        fast, reference = pair(STPN, norm_timing="post", clamp=0.05)
        x = torch.randn(19, T_LONG, 5, dtype=DOUBLE, requires_grad=True)
        out_f, final_f, grads_f = loss_and_grads(fast, x, None)
    finally:
        torch.set_num_threads(threads)
    out_r, final_r, grads_r = loss_and_grads(reference, x, None)
    assert_close(out_f, out_r)
    assert_close(final_f.F, final_r.F)
    for got, want in zip(grads_f, grads_r, strict=True):
        assert_close(got, want)


def _run_in_forked_child(model: STPN, x: torch.Tensor, queue) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do
    queue.put(model(x)[0].detach().numpy())  # a tensor would travel as shared memory


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_with_one_thread_runs_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenMP's threads (torch's and so the C loop's) do not survive a fork: a child that keeps
    several threads hangs in its first parallel region, with torch's own operations as with the
    loop. With one thread the loop runs on the child's own thread."""
    monkeypatch.setattr(backend_c, "MIN_WORK_PER_THREAD", 1)
    threads = torch.get_num_threads()
    model = STPN(5, 4, implementation="fast", dtype=DOUBLE)
    x = torch.randn(16, 6, 5, dtype=DOUBLE)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_run_in_forked_child, args=(model, x, queue))
    torch.set_num_threads(2)
    try:
        want = model(x)[0].detach()  # split across two threads in this process
        child.start()
        got = torch.from_numpy(queue.get(timeout=60))
        child.join(timeout=60)
    finally:
        torch.set_num_threads(threads)
        if child.is_alive():  # hung: do not leave it behind
            child.kill()
    assert child.exitcode == 0
    assert_close(got, want)


def _saturation_case(activation: str, dtype: torch.dtype, inputs: int) -> tuple:
    """A fast and a reference layer of 19 units (two 8-lane vectors or one 16-lane vector, plus a
    scalar tail) and inputs whose scale grows over the batch from 1e-2 to 1e4, so the first
    step's pre-activations sweep from below 1 to about ±1e4."""
    torch.manual_seed(0)  # drawn in float64 and rounded, so both precisions share one case
    fast = STPN(inputs, 19, implementation="fast", activation=activation, dtype=DOUBLE)
    reference = STPN(inputs, 19, implementation="reference", activation=activation, dtype=DOUBLE)
    reference.load_state_dict(fast.state_dict())
    fast, reference = fast.to(dtype), reference.to(dtype)
    scale = torch.logspace(-2, 4, 24, dtype=DOUBLE).view(-1, 1, 1)
    x = (torch.randn(24, 6, inputs, dtype=DOUBLE) * scale).to(dtype).requires_grad_()
    W = fast.weight.detach()[:, :inputs]  # h_{-1} = 0, F_0 = 0: a_0 = W x_0 / |W| + b
    a0 = x[:, 0].detach() @ W.T / fast.weight.detach().norm(dim=1) + fast.bias.detach()
    assert (a0.abs() < 1).any() and (a0.abs() > 1e3).any()
    assert ((a0 > 44) & (a0 < 1e3)).any() and (a0 < -1e3).any()
    return fast, reference, x


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
@pytest.mark.parametrize("inputs", [6, 13], ids=["D25_256bit", "D32_512bit"])
def test_saturating_activations_match_reference(
    backend: str, activation: str, dtype: torch.dtype, inputs: int
) -> None:
    """Pre-activations far beyond the range of exp (overflow at 44 in float32, at 710 in
    float64): the fast path's outputs and gradients stay finite and equal the reference's."""
    fast, reference, x = _saturation_case(activation, dtype, inputs)
    assert (inputs + 19) % backend_c.WIDE_ROWS == (0 if inputs == 13 else 9)
    results = []
    for model in (fast, reference):
        out, final = model(x)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        loss = (out * weights).sum() + final.F.square().sum()
        results.append((out, final.F, *torch.autograd.grad(loss, [*model.parameters(), x])))
    # float32 at inputs of 1e4: the gradient of a normalised row cancels two terms of order
    # |v| / |G| (v nearly parallel to G, which Hebbian memory makes it), so the two float32
    # computations drift apart by up to about 1e-3 of the largest gradient.
    output_tolerance, grad_tolerance = (1e-10, 1e-10) if dtype == DOUBLE else (1e-4, 5e-3)
    for k, (got, want) in enumerate(zip(*results, strict=True)):
        assert torch.isfinite(got).all()
        scale = max(want.abs().max().item(), 1.0)
        tolerance = output_tolerance if k < 2 else grad_tolerance
        torch.testing.assert_close(got, want, atol=tolerance * scale, rtol=0)
    out = results[0][0]
    assert (out == (-1 if activation == "tanh" else 0)).any() and (out == 1).any()


@pytest.mark.parametrize("options", [{}, {"norm_timing": "post"}], ids=["pre", "post"])
def test_zero_rows_give_finite_gradients(backend: str, options: dict) -> None:
    """An all-zero efficacy row has norm 0: its gradient through the norm is 0, as in torch's
    ``vector_norm``, not 0/0 (the fast-math build assumes no NaN or infinity). The gradients
    still grow by 1/eps = 1e16 per step back, so float32 overflows here, for the reference too."""
    fast = STPN(5, 4, implementation="fast", bias=False, dtype=DOUBLE, **options)
    reference = STPN(5, 4, implementation="reference", bias=False, dtype=DOUBLE, **options)
    with torch.no_grad():
        fast.weight.zero_()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(3, 4, 5, dtype=DOUBLE, requires_grad=True)
    grads = []
    for model in (fast, reference):
        out, final = model(x)
        loss = out.sum() + final.F.sum()
        grads.append(torch.autograd.grad(loss, [*model.parameters(), x]))
    for got, want in zip(*grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=0, rtol=1e-10)


@pytest.mark.parametrize("chunk", [None, 3])
def test_no_state_is_a_zero_state(backend: str, chunk: int | None) -> None:
    """Without a state the fast loop starts from zeros that nobody builds (the C loop reads no
    memory for them); outputs, final state and every gradient are those of an explicit zero
    state, bit for bit, also when the sequence is recomputed in chunks."""
    model, _ = pair(STPN, **OPTIONS["maze"])
    model.bptt_chunk = chunk
    x = torch.randn(BATCH, T_LONG, 5, dtype=DOUBLE, requires_grad=True)
    results = []
    for state in (None, model.initial_state(BATCH)):
        out, final = model(x, state)
        loss = out.square().sum() + final.F.sum() + final.h.sum()
        grads = torch.autograd.grad(loss, [x, *model.parameters()])
        results.append([out, final.h, final.F, *grads])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
@pytest.mark.parametrize("grad", [True, False])
def test_every_non_finite_input_is_named(backend: str, dtype: torch.dtype, grad: bool) -> None:
    """The fast loop checks x and a given state itself, as it reads them, a group of samples at
    a time: a NaN or an infinity in any sample (of a whole group or of those left over), at any
    step, is refused with the input's name, with or without a graph; huge finite values pass."""
    model = STPN(5, 4, implementation="fast", dtype=dtype)
    x = torch.randn(BATCH, T_LONG, 5, dtype=dtype)
    zero = model.initial_state(BATCH)
    state = STPNState(torch.randn_like(zero.h), torch.randn_like(zero.F), None)
    inputs = {"x": x, "state.h": state.h, "state.F": state.F}
    with torch.set_grad_enabled(grad):
        for name, tensor in inputs.items():
            for sample, bad in ((0, float("nan")), (5, float("inf")), (BATCH - 1, -float("inf"))):
                broken = {**inputs, name: tensor.clone()}
                broken[name][sample].view(-1)[sample % 3 - 2] = bad
                with pytest.raises(ValueError, match=f"^{name}: contains NaN or infinite"):
                    model(broken["x"], STPNState(broken["state.h"], broken["state.F"], None))
        huge = torch.finfo(dtype).max
        model(torch.full_like(x, huge), STPNState(zero.h + huge, zero.F + huge, None))


@pytest.mark.parametrize("steps", [1, T_LONG])
def test_no_grad_calls_equal_reference(backend: str, steps: int) -> None:
    """Without a graph to record (rollouts: one step at a time under no_grad) the backend runs
    without the autograd Function; outputs and states are the same."""
    fast, reference = pair(STPN, **OPTIONS["maze"])
    x = torch.randn(BATCH, steps, 5, dtype=DOUBLE)
    state = random_state(fast, BATCH)
    state = STPNState(state.h.detach(), state.F.detach(), None)
    with torch.no_grad():
        out, final = fast(x, state)
        out_again, final_again = fast(x, final)
    want, want_final = reference(x, state)
    want_again, want_final_again = reference(x, want_final)
    assert out.grad_fn is None and final.F.grad_fn is None
    for got, expected in [(out, want), (final.h, want_final.h), (final.F, want_final.F),
                          (out_again, want_again), (final_again.F, want_final_again.F)]:
        assert_close(got, expected.detach())


@pytest.mark.parametrize("dtype", [torch.float32, DOUBLE])
@pytest.mark.parametrize("inputs", [5, 12], ids=["256-bit", "512-bit"])
@pytest.mark.parametrize("name", ["maze", "clamp_pre"])
def test_a_nan_parameter_is_not_clamped_away(
    backend: str, name: str, inputs: int, dtype: torch.dtype
) -> None:
    """The clamp keeps NaN (as torch's does): a NaN Γ of one synapse makes the same values of
    the next memory NaN as in the reference loop (that synapse, or its row after the post norm),
    in whole groups and in the samples left over, instead of being clamped to a finite bound
    that would hide it. One step: later steps spread the NaN to every value."""
    fast, reference = pair(STPN, inputs, **OPTIONS[name])
    fast, reference = fast.to(dtype), reference.to(dtype)
    for model in (fast, reference):
        with torch.no_grad():
            model.weight_gamma[1, 2] = float("nan")
    x = torch.randn(BATCH, 1, inputs, dtype=dtype)
    with torch.no_grad():
        (out, final), (want, want_final) = fast(x), reference(x)
    assert want_final.F.isnan().any() and not want_final.F.isnan().all()
    for got, expected in [(out, want), (final.F, want_final.F)]:
        torch.testing.assert_close(got.isnan(), expected.isnan(), atol=0, rtol=0)
