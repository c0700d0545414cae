"""Keeping long campaigns healthy: cyclic graphs, memory, one swarm.

None of this changes what an example does; it keeps a campaign of thousands of
examples from hanging on a simulator bug, from growing without end, and from
running two layers of swarm testing at once.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from hypothesis.stateful import RuleBasedStateMachine

from sim.check import Checker, Violation
from sim.replay import Replayer


def release(replayer: Replayer | None) -> None:
    """Drop a finished example's replayer.  Nothing module-level keeps a Machine alive
    any more (the checkers' StepLog is held by the checkers), so there is nothing to undo;
    kept as the one place the campaign says an example is over."""
    return None


_examples_since_gc = 0
GC_EVERY = 200


def example_finished() -> None:
    """Count a finished example towards the next `collect_garbage`."""
    global _examples_since_gc
    _examples_since_gc += 1


def collect_garbage() -> None:
    """A full collection once GC_EVERY examples have finished, before the next one
    starts (a run whose last example ends the count does not pay for one).  A finished
    Machine is cyclic garbage (simpy processes, observers) holding numpy disk contents;
    Python only counts objects to decide when to collect, and Hypothesis keeps so many
    long-lived ones that a full collection may otherwise wait a long time.  (A full
    collection costs ~50-100 ms.)"""
    global _examples_since_gc
    if _examples_since_gc >= GC_EVERY:
        _examples_since_gc = 0
        gc.collect()


def freeze_startup_heap() -> None:
    """Move every object alive when a campaign starts (modules, Hypothesis' strategies
    and tables, the constant pool: ~49,000 objects) out of the collector's sight
    (`gc.freeze`).  They live as long as the process, and every full collection walked
    them again: the one `collect_garbage` asks for every GC_EVERY examples and the ones
    Hypothesis asks for itself.  A 200-example campaign spent about a quarter less time
    collecting (0.60-0.66 s against 0.87-0.93 s).  Objects made later are collected as
    before.  Once per process: what a later campaign of the same process (a test run, a
    worker) finds alive may be dropped later, and a frozen cycle is never collected."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()  # what is garbage already is not frozen with the rest
    gc.freeze()


_frozen = False


class CycleGuard:
    """Says, once per step, whether the block graph has a cycle (children followed:
    file, backing, target).  Only a simulator bug makes one."""

    def __init__(self) -> None:
        self.index = -1
        self.found = False

    def cyclic(self, machine: Any, index: int) -> bool:
        if index != self.index:
            self.index, self.found = index, has_cycle(machine.state.graph.nodes)
        return self.found


def has_cycle(nodes: list[Any]) -> bool:
    """Depth-first search with colours over the nodes' children."""
    state: dict[int, int] = {}  # id -> 1 on the stack, 2 done
    for root in nodes:
        if id(root) in state:
            continue
        stack = [(root, iter(list(root.children())))]
        state[id(root)] = 1
        while stack:
            node, kids = stack[-1]
            child = next(kids, None)
            if child is None:
                state[id(node)] = 2
                stack.pop()
            elif state.get(id(child)) == 1:
                return True
            elif id(child) not in state:
                state[id(child)] = 1
                stack.append((child, iter(list(child.children()))))
    return False


class Guarded:
    """A checker that sits out steps that leave a cyclic graph: checkers walk backing
    chains, which never end on a cycle; graph-well-formed (unguarded) reports it."""

    def __init__(self, inner: Checker, guard: CycleGuard) -> None:
        self.inner = inner
        self.name = inner.name
        self.guard = guard
        self.machine: Any = None

    def attach(self, machine: Any) -> None:
        self.machine = machine
        self.inner.attach(machine)

    def after_step(self, index: int) -> list[Violation]:
        if self.guard.cyclic(self.machine, index):
            return []
        return self.inner.after_step(index)

    def at_end(self) -> list[Violation]:
        if self.guard.found:
            return []
        return self.inner.at_end()


def one_swarm_only(machine: RuleBasedStateMachine) -> None:
    """Turn off Hypothesis' own swarm testing of single rules (its FeatureFlags, which
    disable about half the rules of each example) so that ours, by group, is the only
    one: both together left a given 4-rule sequence about one example in 250 to run in.
    Relies on RuleStrategy internals (Hypothesis 6.1xx); does nothing if they moved."""
    strategy = getattr(machine, "_rules_strategy", None)
    rules = getattr(strategy, "rules_strategy", None)
    if rules is None or not hasattr(strategy, "_enabled_rules_strategy"):
        return
    from hypothesis.strategies._internal.strategies import SampledFromStrategy

    if isinstance(rules, SampledFromStrategy) and not rules._transformations:
        # the same elements (so the same label and the same draws) under a short name:
        # Hypothesis spells a filtered draw's strategy out when its first try misses
        # (several times an example), and the rules' repr is 9 KB, 0.2 ms to build
        rules = SampledFromStrategy(rules.elements, force_repr=f"{type(machine).__name__}.rules")
    strategy._enabled_rules_strategy = rules.filter(strategy.is_valid)  # type: ignore[union-attr]


def no_local_constants() -> None:
    """Pin the pool of constants Hypothesis mixes into what it generates.

    Hypothesis (since 6.131) draws, now and then, literals found in the source of every
    "local" module in `sys.modules` (not the standard library, not site-packages).
    Which modules those are depends on what the process imported (the command line, a
    Dask worker's imports) and on how blocksim is installed (a pip install is in
    site-packages): the same seed produced different examples.  The pool is pinned to
    the literals of every module of the `sim` package, read from the source files in
    path order, whatever is imported; the simulator's own constants (sizes, offsets,
    names) keep helping the search, the same way in every process."""
    from hypothesis.internal.conjecture import providers

    if getattr(providers._get_local_constants, "_blocksim_pinned", False):
        return
    pool = _package_constants(providers)

    def pinned() -> Any:
        return pool

    pinned._blocksim_pinned = True  # type: ignore[attr-defined]
    providers._get_local_constants = pinned
    providers.CONSTANTS_CACHE.cache.clear()


class _EngineClock:
    """The `time` module as Hypothesis' engine sees it, but for `monotonic`, which it
    reads only to time its first failure: always 0.0 (see `no_wall_clock_in_search`)."""

    def __getattr__(self, name: str) -> Any:
        import time

        return getattr(time, name)

    @staticmethod
    def monotonic() -> float:
        return 0.0


def no_wall_clock_in_search() -> None:
    """Keep the wall clock out of what Hypothesis generates.

    Once a run has found a failure, Hypothesis' engine generates on for a while to find
    more (`report_multiple_bugs`): until a number of calls that depends only on when the
    failures were found, or until 10 s of wall time have passed since the first, then
    it shrinks.  On a slow or busy machine the 10 s come first: the round generated fewer
    examples, went on in a part with another seed, and the same campaign seed gave other
    examples and other failures (a 400-example campaign: 274 shrink runs and 15,146 steps
    at full speed, 161 and 7,354 with 60 ms added to each example).  The engine reads
    `time.monotonic` for nothing else; it now reads a clock that stands still, so the
    call counts alone end that search (shrinking keeps its own deadline, on
    `time.perf_counter`)."""
    from hypothesis.internal.conjecture import engine

    if not isinstance(engine.time, _EngineClock):
        engine.time = _EngineClock()  # type: ignore[assignment]


SORT_KEY_CACHE = 4096  # choice sequences whose key is kept (a round's Pareto front is smaller)


def cache_sort_keys() -> None:
    """Compute Hypothesis' shrink order key of a choice sequence once per sequence.

    Hypothesis orders examples by `sort_key(nodes)` (length, then every choice's index),
    recomputed at each comparison.  With an example database Hypothesis keeps a Pareto
    front of examples with `target()` scores, and adding an example compares it with up
    to twenty of the front's: a blocksim example is a few hundred choices, many of them
    byte strings whose index is a long computation, so 2 ms a comparison and a quarter
    of a campaign's time went into keys of the same few hundred sequences.  A finished
    example's nodes are an immutable tuple: its key is kept, by identity (the tuple is
    held, so its id is not reused), for the last SORT_KEY_CACHE sequences.  The keys
    are the same values, so every comparison, and what Hypothesis does, is unchanged."""
    from hypothesis.internal.conjecture import engine, pareto, shrinker

    if getattr(shrinker.sort_key, "_blocksim_cached", False):
        return
    compute = shrinker.sort_key
    kept: dict[int, tuple[Any, Any]] = {}

    def sort_key(nodes: Any) -> Any:
        if type(nodes) is not tuple:
            return compute(nodes)
        hit = kept.get(id(nodes))
        if hit is not None and hit[0] is nodes:
            return hit[1]
        key = compute(nodes)
        if len(kept) >= SORT_KEY_CACHE:
            del kept[next(iter(kept))]  # the oldest
        kept[id(nodes)] = (nodes, key)
        return key

    sort_key._blocksim_cached = True  # type: ignore[attr-defined]
    for module in (shrinker, pareto, engine):
        module.sort_key = sort_key  # type: ignore[attr-defined]


def _package_constants(providers: Any) -> Any:
    """The literals of every sim/**/*.py, in Hypothesis' own sorted containers."""
    from sortedcontainers import SortedSet

    pool = providers.Constants(
        integers=SortedSet(),
        floats=SortedSet(key=providers.float_to_int),
        bytes=SortedSet(),
        strings=SortedSet(),
    )
    for constant in _package_literals():
        pool.add(constant)
    return pool


CACHE_ENV = "BLOCKSIM_CACHE_DIR"  # where the literal lists are kept (default below)
CACHE_KEEP = 8  # literal lists kept (one per source tree and Hypothesis version seen)


def _package_literals() -> list[Any]:
    """Every literal Hypothesis finds in sim/**/*.py, file by file in path order, each
    file's in the order found (the pool is built by adding them in this order).

    Parsing the ~200 source files takes ~0.5 s of CPU, a third of a `blocksim fuzz`
    process' start-up.  The list is a function of the files' bytes and Hypothesis'
    version only (and Python's, which parses them), so it is kept in a cache file named
    by a digest of these
    (`$BLOCKSIM_CACHE_DIR`, else `$XDG_CACHE_HOME/blocksim`, else ~/.cache/blocksim);
    a missing, unreadable or unwritable cache only means parsing again."""
    import hashlib
    import marshal

    import hypothesis
    from hypothesis.internal.constants_ast import _constants_from_source

    root = Path(__file__).resolve().parent.parent
    sources: list[bytes] = []
    digest = hashlib.blake2b(f"{hypothesis.__version__} {sys.version}".encode(), digest_size=16)
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_bytes()
        except OSError:
            continue
        sources.append(source)
        # (no bytes literal here: it would join the pool and the bytes Hypothesis draws)
        digest.update(f"\0{path.relative_to(root).as_posix()}\0{len(source)}\0".encode())
        digest.update(source)
    folder = _cache_dir()
    cache = folder / f"constants-{digest.hexdigest()}.marshal" if folder else None
    try:
        found = marshal.loads(cache.read_bytes()) if cache else None
        if isinstance(found, list):
            return found
    except (OSError, EOFError, ValueError, TypeError):
        pass
    literals: list[Any] = []
    for source in sources:
        try:
            literals.extend(_constants_from_source(source, limit=True))
        except (SyntaxError, ValueError, RecursionError):
            continue
    if cache is not None:
        try:
            _write_cache(cache, marshal.dumps(literals))
        except ValueError:  # a literal marshal cannot write: parse again next time
            pass
    return literals


def _cache_dir() -> Path | None:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    try:
        return (Path(base) if base else Path.home() / ".cache") / "blocksim"
    except RuntimeError:  # no home directory to be found
        return None


def _write_cache(path: Path, data: bytes) -> None:
    """Write the cache file whole (a temporary file renamed: concurrent campaigns read
    the old file or the new one), keeping the CACHE_KEEP newest; never fails."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".constants-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        kept = sorted(path.parent.glob("constants-*.marshal"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-CACHE_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


GENERATING = frozenset({"generate", "target"})


def end_run_unexplored() -> NoReturn:
    """End the current Hypothesis run before it draws anything, as if its data had run
    out (an overrun).

    Hypothesis files every run's outcome in its tree of choices and checks each later
    run against it: a run rejected before its first draw contradicts the earlier runs
    that drew on from the same (empty) prefix, and Hypothesis ends the whole test with
    FlakyStrategyDefinition ("Inconsistent data generation"), dropping the failures it
    had found.  An overrun is never filed in that tree."""
    from hypothesis.control import current_build_context

    current_build_context().data.mark_overrun()


def end_generation() -> NoReturn:
    """The round has generated what it was asked for: end this run unexplored and, when
    no failure is waiting to be shrunk, Hypothesis' whole test with it.

    Hypothesis counts only valid runs towards `max_examples`, a campaign counts every
    generated run; when the campaign's count is reached first, every later run is an
    overrun, which Hypothesis never counts.  Without a failure its target phase then
    goes on shrinking its Pareto front with runs that all overrun, until its limit on
    invalid runs (about 2,000 calls, each sorted and compared by the shrinker: 9 of
    every 10 seconds of a campaign whose failures were all muted).  Telling the engine
    its valid examples are all in makes it stop after this run, as it stops on its own
    once `max_examples` valid runs are in.  With a failure found it moves on to
    shrinking it, so the count is left alone."""
    runner = _runner(sys._getframe(1))
    if runner is not None and not _runner_count(runner, "interesting"):
        valid = _runner_name(runner, "valid")
        setattr(runner, valid, max(getattr(runner, valid), runner.settings.max_examples))
    end_run_unexplored()


def _runner_name(runner: Any, what: str) -> str:
    """The engine's attribute for its `what` runs (`interesting`, `valid`): Hypothesis
    calls them `<what>_examples` up to 6.15x and `<what>_test_cases` since (a campaign
    that asked for the old name on a newer Hypothesis ended its rounds with
    FlakyStrategyDefinition, since an AttributeError stopped a run early)."""
    old = f"{what}_examples"
    return old if hasattr(runner, old) else f"{what}_test_cases"


def _runner_count(runner: Any, what: str) -> Any:
    return getattr(runner, _runner_name(runner, what))


def hypothesis_phase() -> str:
    """The phase of the Hypothesis run that called us: `generate` or `target` for a new
    example, `reuse` (database), `shrink`, `explain`; `unknown` outside a run.

    Hypothesis calls the test function for new examples and, as often again, to
    replay and shrink; only the first kind is what `max_examples` (and `blocksim fuzz
    --examples`) asks for.  Hypothesis keeps the phase on its engine object, which is
    found on the stack (one walk per example)."""
    runner = _runner(sys._getframe(1))
    return "unknown" if runner is None else str(runner._current_phase)


def _runner(frame: Any) -> Any:
    """Hypothesis' engine (ConjectureRunner) running the test that called us: found on
    the stack from `frame` outwards, None outside a run."""
    from hypothesis.internal.conjecture.engine import ConjectureRunner

    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, ConjectureRunner):
            return obj
        runner = getattr(obj, "_runner", None)
        if isinstance(runner, ConjectureRunner):
            return runner
        frame = frame.f_back
    return None
