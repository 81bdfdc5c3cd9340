"""The whole pipeline against outside truths: exact rationals, qhull, HiGHS."""

from fractions import Fraction

import numpy as np
import pytest
from helpers import highs_margins, hull_vertices_argmaxable, small_heads
from hypothesis import given, settings
from hypothesis import strategies as st

import unargmax_jax as ua
from unargmax_jax import exact

SETTINGS = settings(deadline=None, max_examples=60, derandomize=True)


def checked(W, b=None, domain=ua.Box(-100.0, 100.0), **kwargs):
    """Run the check and always re-verify its evidence independently."""
    report = ua.check(W, b, domain, **kwargs)
    result = ua.verify(report, W, b)
    assert result.ok, result.reasons
    return report


def _assert_matches_exact(report, margins):
    for i, m in enumerate(margins):
        want = 1 if m > 0 else -1
        assert report.verdict[i] == want, (i, m, report.lower[i], report.upper[i], report.stage[i])
        m = Fraction(m) if not isinstance(m, Fraction) else m
        lo, hi = float(report.lower[i]), float(report.upper[i])
        assert lo == -np.inf or Fraction(lo) <= m, (i, lo, m)
        assert hi == np.inf or m <= Fraction(hi) or report.stage[i] == "tie", (i, hi, m)


@given(small_heads())
@SETTINGS
def test_box_verdicts_equal_exact_oracle(head):
    W, b = head
    report = checked(W, b)
    assert report.counts()["undecided"] == 0
    margins = exact.box_margins(W, b, -100.0, 100.0)
    _assert_matches_exact(report, margins)


@given(small_heads())
@SETTINGS
def test_free_verdicts_equal_exact_oracle(head):
    W, b = head
    report = checked(W, b, ua.Free())
    assert report.counts()["undecided"] == 0
    truth = exact.free_verdicts(W, b)
    assert [bool(v == 1) for v in report.verdict] == list(truth)


@given(small_heads(with_bias=False))
@settings(deadline=None, max_examples=30, derandomize=True)
def test_ball_without_bias_equals_free(head):
    """Without bias the argmax regions are cones, so any centred ball gives the free verdicts."""
    W, _ = head
    report = checked(W, None, ua.Ball(0.0, 2.5))
    assert report.counts()["undecided"] == 0
    assert [bool(v == 1) for v in report.verdict] == list(exact.free_verdicts(W, None))


@pytest.mark.parametrize("C,d", [(60, 2), (120, 3), (200, 4), (300, 5), (150, 6), (300, 8)])
def test_free_without_bias_equals_convex_hull_vertices(C, d):
    W = np.random.default_rng(C * 10 + d).normal(size=(C, d))
    report = checked(W, None, ua.Free())
    assert report.counts()["undecided"] == 0
    np.testing.assert_array_equal(report.verdict == 1, hull_vertices_argmaxable(W))


def test_chunking_and_repeat_runs_give_identical_reports():
    rng = np.random.default_rng(7)
    W = rng.normal(size=(90, 3)).astype(np.float32)
    b = rng.normal(size=90).astype(np.float32)
    big = ua.check(W, b, chunk_size=128)
    small = ua.check(W, b, chunk_size=7)
    one_by_one = ua.check(W, b, chunk_size=1, tokens=np.arange(30))
    np.testing.assert_array_equal(one_by_one.verdict[:30], big.verdict[:30])
    again = ua.check(W, b, chunk_size=128)
    np.testing.assert_array_equal(big.verdict, small.verdict)
    np.testing.assert_array_equal(big.verdict, again.verdict)
    np.testing.assert_array_equal(big.lower, again.lower)
    np.testing.assert_array_equal(big.upper, again.upper)
    np.testing.assert_array_equal(big.witnesses, again.witnesses)
    # Token by token: a head restricted to the competitors of token i is not the same
    # problem, so compare each token's verdict with the exact margin instead.
    margins = highs_margins(W.astype(np.float64), b.astype(np.float64), -100.0, 100.0)
    decided = np.where(np.abs(margins) > 1e-6, np.sign(margins), 0)
    mask = decided != 0
    np.testing.assert_array_equal(small.verdict[mask], decided[mask].astype(np.int8))


def test_exact_ties_strict_and_first():
    W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    strict = checked(W, None)
    assert list(strict.verdict) == [-1, 1, -1, 1, -1]
    assert strict.twins[0] == [2, 4] and strict.twins[2] == [0, 4]
    first = checked(W, None, ties="first")
    assert list(first.verdict) == [1, 1, -1, 1, -1]
    assert set(first.stage[[2, 4]]) == {"tie"}


def test_single_class_and_two_identical_classes():
    assert checked(np.array([[0.3, -1.0]])).verdict.tolist() == [1]
    both = checked(np.array([[0.3, -1.0], [0.3, -1.0]]), np.array([1.0, 1.0]))
    assert both.verdict.tolist() == [-1, -1]


def test_report_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(40, 2))
    report = ua.check(W, rng.normal(size=40))
    report.save(tmp_path)
    loaded = ua.Report.load(tmp_path)
    np.testing.assert_array_equal(loaded.verdict, report.verdict)
    np.testing.assert_array_equal(loaded.lower, report.lower)
    np.testing.assert_array_equal(loaded.certificate_support, report.certificate_support)
    assert ua.verify(loaded, W, rng.normal(size=40)).ok is False  # different bias: sha mismatch


def test_bad_arguments_are_clear():
    W = np.ones((3, 2))
    with pytest.raises(ValueError, match="ties"):
        ua.check(W, ties="last")
    with pytest.raises(TypeError, match="unknown option"):
        ua.check(W, pdhg_round=3)
    with pytest.raises(ValueError, match="Box.lo"):
        ua.check(W, domain=ua.Box(np.zeros(3), 1.0))


def test_braid_reflect_option_gives_the_same_verdicts():
    rng = np.random.default_rng(8)
    W = rng.normal(size=(80, 3))
    b = rng.normal(size=80)
    plain = checked(W, b)
    braided = checked(W, b, braid_steps=5)
    np.testing.assert_array_equal(plain.verdict, braided.verdict)
    np.testing.assert_array_equal(plain.verdict, np.where(highs_margins(W, b, -100.0, 100.0) > 0, 1, -1))


@given(small_heads(), st.data())
@settings(deadline=None, max_examples=25, derandomize=True)
def test_selected_tokens_match_a_full_check(head, data):
    W, b = head
    C = W.shape[0]
    chosen = data.draw(st.lists(st.integers(0, C - 1), min_size=1, max_size=C, unique=True))
    subset = checked(W, b, tokens=np.array(chosen))
    margins = exact.box_margins(W, b, -100.0, 100.0)
    for i in range(C):
        if i in chosen:
            assert subset.verdict[i] == (1 if margins[i] > 0 else -1), (i, margins[i])
        else:
            assert subset.verdict[i] == 2 and subset.stage[i] == "skipped"
            assert subset.witness(i) is None and subset.certificate(i) is None
    mask = np.zeros(C, bool)
    mask[chosen] = True
    np.testing.assert_array_equal(checked(W, b, tokens=mask).verdict, subset.verdict)


def test_bad_token_selection_is_clear():
    W = np.eye(3)
    with pytest.raises(ValueError, match=r"ids must lie in 0..2"):
        ua.check(W, tokens=[0, 3])
    with pytest.raises(ValueError, match="selection is empty"):
        ua.check(W, tokens=np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"boolean mask of shape \(3,\)"):
        ua.check(W, tokens=np.ones(4, bool))


@given(st.lists(st.integers(0, 30), max_size=20))
@settings(deadline=None, max_examples=50)
def test_compact_rows_equals_fancy_indexing(picks):
    from unargmax_jax.assemble import compact_rows as _compact_rows

    table = np.arange(31 * 3, dtype=np.float32).reshape(31, 3)
    for rows in (np.array(sorted(set(picks)), np.int64), np.array(picks, np.int64)):
        expected = table[rows].copy()
        np.testing.assert_array_equal(_compact_rows(table.copy(), rows, block=4), expected)


def test_progress_bar_shows_after_its_delay(capsys):
    from unargmax_jax.solve.progress import Progress as _Progress

    quiet = _Progress(True, delay=60.0)
    quiet.update("screen", 1, 4)
    quiet.close()
    assert capsys.readouterr().err == ""  # a quick run prints nothing
    shown = _Progress(True, delay=0.0, every=0.0, width=8)
    shown.update("screen", 0, 4)
    shown.update("screen", 2, 4)
    shown.close()
    err = capsys.readouterr().err
    assert "[####----] 2/4 tokens" in err and "eta" in err and err.endswith("\n")
    off = _Progress(False, delay=0.0)
    off.update("screen", 2, 4)
    assert capsys.readouterr().err == ""


@given(st.integers(1, 50), st.integers(1, 9), st.integers(0, 7))
@settings(deadline=None, max_examples=30)
def test_aligned_copies_only_when_needed(rows, cols, shift):
    from unargmax_jax.heads import aligned

    base = np.arange(rows * cols + 8, dtype=np.float32)
    arr = base[shift:shift + rows * cols].reshape(rows, cols)
    out = aligned(arr)
    np.testing.assert_array_equal(out, arr)
    assert out.ctypes.data % 64 == 0 and out.flags.c_contiguous
    assert aligned(out) is out


def test_an_aligned_head_is_not_copied_to_the_cpu_device():
    import jax

    from unargmax_jax.solve.context import on_device
    from unargmax_jax.heads import aligned

    if jax.devices()[0].platform != "cpu":
        pytest.skip("host aliasing is a CPU property")
    W = aligned(np.ones((64, 8), np.float32))
    device = on_device(W, np.float32)
    W[3, 2] = 5.0  # visible through the device array: it is the same memory
    assert float(device[3, 2]) == 5.0


def _check_with_the_warmup_first(monkeypatch, caplog, W, b):
    """``checked(W, b)`` with the background compile forced on and finished before the
    first stage runs (which thread reaches a kernel first is the machine's timing; what
    can be wrong is whether the real calls find the thread's kernels, so a compile on the
    main thread is then a miss). Returns the report and the compiles it logged, as
    (``Compiling jit(name)``, the message up to its argument mapping, thread name)."""
    import jax

    from unargmax_jax.solve import warmup

    monkeypatch.setattr(warmup, "WARMUP_MIN_FLOPS", 0.0)
    original_start = warmup.Warmup.start

    def start_and_finish(self):
        original_start(self)
        if self._thread is not None:
            self._thread.join()

    monkeypatch.setattr(warmup.Warmup, "start", start_and_finish)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level("WARNING"):
            report = checked(W, b)
    finally:
        jax.config.update("jax_log_compiles", False)
    return report, [(r.getMessage().split(" with global shapes")[0], r.getMessage().split("Argument mapping")[0],
                     r.threadName) for r in caplog.records if r.getMessage().startswith("Compiling jit(")]


def test_background_compile_gives_the_same_report_and_the_real_calls_find_its_kernels(monkeypatch, caplog):
    # The later stages' kernels are compiled on a thread while the first screening pass
    # runs. The real calls must find them: every ascent/PDHG compile happens on that thread
    # and no (kernel, shapes) pair compiles twice; and nothing in the report may change.
    # A midpoint row (margin exactly 0) sends a token through every stage.
    from unargmax_jax.solve import ascent, pdhg, screen, witness

    rng = np.random.default_rng(11)
    W = rng.normal(size=(613, 7)).astype(np.float32)  # a shape no other test compiles
    W[0] = (W[1] + W[2]) / 2
    plain = checked(W, None, background_compile=False)
    for kernel in (screen.screen_chunk, screen.braid_chunk, ascent.ascent_chunk, pdhg.pdhg_chunk, witness.witness_chunk):
        kernel.clear_cache()
    # Regression (CI, loaded machine): the main thread reached ascent before the thread had
    # compiled it (hence the thread first, in the helper).
    warm, compiles = _check_with_the_warmup_first(monkeypatch, caplog, W, None)
    # Regression: the float16 witness re-proof, the competitor sets and braid compiled on
    # the main thread (in the first pass or after it), and the thread started only once a
    # chunk had left a token open.
    names = ("Compiling jit(_ascent_chunk)", "Compiling jit(_pdhg_chunk)", "Compiling jit(_braid_chunk)",
             "Compiling jit(_top_chunk)")
    later = [c for c in compiles if c[0] in names]
    assert {c[0] for c in later} == set(names)
    assert all(thread == "unargmax-warmup" for _, _, thread in later), [(c[1][:200], c[2]) for c in later]
    screens = [thread for name, _, thread in compiles if name == "Compiling jit(_screen_chunk)"]
    assert sorted(screens) == ["MainThread", "unargmax-warmup"], screens  # the first pass's; the second's
    # (The log names shapes, not static arguments; within one check ascent and PDHG keep
    # theirs fixed, so a repeated signature of theirs is a second compile.)
    signatures = [c[1] for c in later]
    assert len(signatures) == len(set(signatures)), "a kernel compiled twice for the same shapes"
    assert {"ascent", "pdhg"} & set(warm.stage.tolist()) or warm.stage[0] == "rational"
    for field in ("verdict", "lower", "upper", "stage", "witness_ids"):
        assert np.array_equal(getattr(warm, field), getattr(plain, field)), field
    assert np.array_equal(warm.witnesses, plain.witnesses)


def test_background_compile_builds_the_symmetric_step_while_the_pre_pass_runs(monkeypatch, caplog):
    # The symmetric pass's step compiled on the main thread between the pre-pass and the
    # first block (0.5 s of SmolLM2's critical path); the warm-up thread's first job now
    # compiles it, with the arguments the real calls have, so they find it compiled.
    from unargmax_jax.solve import symmetric

    rng = np.random.default_rng(12)
    W = (rng.normal(size=(4100, 48)) * np.exp(rng.normal(0, 0.3, 48))).astype(np.float32)  # no other test's shape
    b = rng.normal(size=4100).astype(np.float32)
    plain = checked(W, b, background_compile=False)
    for kernel in (symmetric.step, symmetric.rows_of_blocks):
        kernel.clear_cache()
    warm, compiles = _check_with_the_warmup_first(monkeypatch, caplog, W, b)
    for name in ("Compiling jit(_step)", "Compiling jit(_rows)"):
        assert [thread for kernel, _, thread in compiles if kernel == name] == ["unargmax-warmup"], (name, compiles)
    for field in ("verdict", "lower", "upper", "stage"):
        assert np.array_equal(getattr(warm, field), getattr(plain, field)), field


def test_free_domain_with_bias_stores_the_bounds_its_exact_certificates_prove():
    # Regression (found trying the README's API example on ua.Free()): on R^d with a bias
    # only exact certificates decide, and the exact stage kept the tighter upper bound of a
    # dropped float certificate, which the stored exact one does not prove.
    W = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=500).astype(np.float32)
    report = checked(W, b, ua.Free())
    # Exact certificates come from the basis stage (FLINT) or the rational stage.
    rational = (report.verdict == -1) & np.isin(report.stage, ["basis", "rational"])
    assert rational.sum() > 100
    for i in np.flatnonzero(rational)[:50]:
        support, weights = report.certificate(int(i))
        total = weights.sum()  # an exact g = 0 certificate proves U = b_i - lam^T b / s
        assert np.isclose(report.upper[i], b[i] - weights @ b[support] / total, rtol=1e-6, atol=1e-6)
