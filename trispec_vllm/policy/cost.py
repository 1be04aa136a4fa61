"""The cost-aware step: pick, per batch size, the step kind that emits the most tokens/s.

Four kinds of engine step serve the same requests:

- ``trispec``: drafter -> proxy -> router -> target on the escalated sub-batch;
- ``sd``: standard speculative decoding, the target verifies every draft and
  the proxy does not run (it catches its KV cache up when it next runs);
- ``draft``: an SD step on the proxy's drafts (greedy, k autoregressive passes)
  instead of the ngram drafter's, as vLLM's draft_model SD;
- ``plain``: vLLM's own decoding, no drafts (chosen one step ahead, when the
  drafter proposes; only for drafters without a KV cache of their own).

Which is fastest depends on the hardware and the batch: on a GPU a target pass
over 8 requests costs about what one over 1 does, so skipping it pays; on a
few CPU cores a large batch is compute-bound, and drafts and proxy passes are
pure extra work. Rather than hand-set thresholds, the engine measures itself:
per batch-size class (powers of two of the running requests) it keeps an
exponentially weighted mean of each kind's step seconds and emitted tokens,
tries every kind in short runs (plain decoding first: it is the baseline),
then takes the one with the most tokens per second, and keeps re-trying the
others now and then (one run in `explore_every` decisions of the class, an
interval that doubles, up to `max_backoff` times, while the re-tries keep
confirming the choice) so a change in the workload is noticed. Trying a kind
is not free: on a CPU whose passes cost their tokens, a TriSpec step can take
several plain steps' time, so a run stops as soon as one step of it has measured
below `abandon` times another kind's rate (`abandon_uniform` for SD and plain
decoding, whose steps vary less), a kind that lost to one doing less
work at a smaller batch is not warmed up at a larger one (speculation pays less
as the batch grows), and from batch 8 on, where some request escalates in nearly
every TriSpec step, the TriSpec step is not warmed up where SD lost to plain
decoding (it costs SD plus a proxy pass there); such kinds are still re-tried,
at the longest exploration interval.
A speculative kind must beat plain decoding by `plain_margin` to be chosen over
it: plain decoding is exact and costs no quality, so a tie or a gain inside the
noise goes to it (and among equal rates, the kind doing less work). For the same
reason the TriSpec step, the one kind whose tokens the target does not all check,
must beat SD and plain decoding by `lossy_margin` more: at batch 1 on a 2-core CPU
its rate and SD's traded places a dozen times in a few hundred steps, each switch
paying a catch-up, and an engine kept up beside vLLM's ngram SD, interleaved
request by request, ran at 0.91x (0.84-0.94x) of it. Only steps
that follow a step of the same kind are timed: the first step after a switch
pays the catch-up of the kind before it. Both catch-ups are the TriSpec step's
doing: entering a TriSpec run, the proxy reads the tokens other kinds emitted since
it last ran; after one, the target verifies the tokens the proxy alone completed.
A short run (warm-up, exploration) never pays either in a timed step, so each
switch step's excess over the next step of its kind is booked on the TriSpec step,
spread over the run (without it, short TriSpec runs measured cheaper than TriSpec
steps are). Switches cost
time no timing attributes in full, so a kind must also beat the class's current
choice by `switch_margin` to replace it: kinds within the noise of each other
would otherwise trade places, and pay a catch-up, at every exploration. A switch
also needs fresh evidence: the chosen kind's means follow the machine's drift step
by step, a kind last timed many decisions ago (or restored from an earlier engine)
does not, so such a kind is re-measured in a run before the class switches to it,
and that run's steps outweigh its kept step time sooner than the EWMA would.
Between re-measurements a kind not chosen is compared as if timed beside the
choice: it keeps the chosen kind's mean step seconds at the moments it was timed,
and its own step seconds are scaled by how far the chosen kind's have moved since
(`_drift`), so a slowdown only the chosen kind was there to see moves no choice.

Learning is bounded by what it costs. Every step of a learning run (a warm-up after
the class's first choice, an exploration, a re-measurement, a TriSpec re-try for a
request joining at batch 1), and the step after each such run, is charged its
regret: its seconds beyond what the choice's measured rate would have taken for the
same tokens (none for a step that beat it). No such run starts in a class while its
regret, with what the kind's latest learning run there cost, would be over its budget
share of its decoding seconds: it waits until the choice's steps bring it under (an
exploration due waits, and starts as soon as they do). The
budget starts at `explore_budget` and halves, down to `min_budget`, each time a
learning run leaves the choice as it was (as the exploration interval doubles); it
is reset when one moves the choice. The warm-ups before a class's first choice are
neither charged nor held (there is no choice to compare with yet), but what each cost
against plain decoding's rate (warmed up first) is kept as its kind's expected run
cost, so the first re-try of a costly kind waits for room too. On a 2-core AVX2
CPU at batch 1, where a target pass costs nearly its tokens' worth (0.18 s over 1
token, 0.94 s over 6), each request's TriSpec re-try paid the proxy's catch-up over
its whole context (3.6-6.3 s, 20-35 plain steps) and the target's catch-up after it
(3.9 s), and the default ran at 0.91-0.99x of vLLM's ngram SD, which spends nothing
on learning.

What "most tokens per second" means depends on the load. While requests wait
for a slot, the step's throughput is what serves them soonest. When none waits,
the batch is all there is, and it is done when its slowest request is: a
speculative step makes the requests that accept drafts finish early and the
others pay a larger pass per token, so the batch drains into small, less
efficient steps (on a 2-core CPU at batch 8 the engine measured its SD steps at
1.2x plain decoding's tokens/s, yet a fixed batch finished at 0.88-0.91x plain
decoding's speed with them, and with vLLM's own ngram SD). Then
each kind is ranked by the pace of the batch's slowest request: its tokens per
step of that kind (its running mean, from one token a step before it has steps
of its own) over the kind's step seconds. At batch 1 both measures are the same.
A request is credited only with the drafts it has itself been seen to accept:
the slowest of a batch is below the class's mean by definition, and crediting
newcomers with that mean kept SD chosen for a dozen steps per batch after its
slowest requests had shown they accept nothing (at batch 8 on a 2-core CPU,
mixed code and chat prompts, the default finished at 0.88x plain decoding).

Measuring a kind pays only if what it measures is used. A class a batch starts
in recurs with the next batch; one a fixed batch drains through, as its requests
finish, is passed in its last steps. So in a batch's draining tail (nothing
waits, no request joined since the batch was in a larger class) with fewer than
`min_horizon` steps left (bounded by its longest request's tokens left,
`batch_horizon`), no warm-up, exploration or re-measurement starts, and the
class runs its best measured kind (plain decoding if none is measured). Without
this, at batch 8 on a 2-core CPU, a TriSpec warm-up at batch 4 six steps before
the batch ended took 0.74 s in its first step (the proxy's catch-up over 774
tokens), five plain steps' time.

A run that measures SD in a draining batch pays only where some SD step could later
win, and by the slowest request's pace none can in a step where a request has no
draft: that request emits one token, as in a plain step, from a larger pass. The
same holds for the TriSpec step from `escalates_from` on, where it runs the target
anyway (below it the proxy alone may complete a request without drafts). So in a
draining batch no warm-up, exploration or re-measurement of those kinds starts in a
step where the drafter left a request without a draft (`undrafted`); a step so
barred bars the class's next decisions too, for a wait that doubles (1, 2, 4, ... up
to `explore_every` decisions) while the drafter keeps leaving a request bare, and
the drafter need not run in them (`settled`). Without this, on a 2-core CPU at batch
8, HumanEval and chat prompts mixed, ngram k=8, a fresh engine spent 6 SD steps over
up to 8 drafts per request on warming SD up; with it, none (what that gains in speed
was inside the machine's spread between runs, docs/benchmarks.md).

The choice is made after the drafter proposed, so a step whose drafter found
nothing (ngram on text that does not repeat) is never an ``sd`` step: without
drafts and without the proxy it is plain decoding, and booking it as ``sd``
would credit speculative decoding with plain decoding's speed. (The draft kind
needs no drafter's draft: the proxy drafts for every request that sampled a
token.) Where plain decoding is
settled whatever the drafts (`settled`, `drafts_needed`), the drafter is not run
at all. The proxy drafts only once the draft kind is chosen, and its drafting
time is booked on the step that verifies the drafts, not on the one whose
sampling it followed. Conversely, where drafts exist the TriSpec step is rated
by its own drafted steps (kept apart, `drafted`), and tried once on them in a
class that has none: its steps without drafts emit one token a request and
would hold it under SD where its proxy trusts whole drafts.

In lossless mode the ``trispec`` kind is never faster than ``sd`` (it runs
the same target pass plus the proxy), so it is not a candidate there. Every
kind is exact in lossless mode; in lossy mode the kind of a step changes its
tokens, so a request's output then depends on its batch and on timing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

KINDS = ("trispec", "sd", "draft", "plain")
WORK = ("plain", "sd", "draft", "trispec")  # least work per step first
DEFERS = "trispec"  # the kind that leaves work (the target's catch-up) to later steps
DRAFTED = ("trispec", "sd")  # kinds that verify the drafter's drafts (`CostModel._barred`)
# Kinds whose first step after another kind pays the proxy's catch-up over the tokens
# the other kind emitted (the TriSpec step's proxy pass, the draft kind's first pass).
ENTERS = ("trispec", "draft")
# kind -> the kinds doing less work whose lead at a smaller batch holds it back there
# (`_lost_below`). Not SD for the draft kind: SD is timed only on steps where the ngram
# drafter found drafts (its best), the draft kind on any step.
LESS_WORK = {"sd": ("plain",), "draft": ("plain",), "trispec": ("plain", "sd")}


def size_class(num_reqs: int) -> int:
    """Power-of-two class of a batch size (1, 2, 4, ...)."""
    return 1 << max(num_reqs - 1, 0).bit_length()


@dataclass
class KindStats:
    seconds: float = 0.0  # EWMA of step seconds
    tokens: float = 0.0  # EWMA of tokens emitted per step
    samples: int = 0
    last_seconds: float = 0.0  # seconds of the latest sample
    fresh: int | None = None  # samples since the seconds' mean went stale (None: never)
    # The class's current choice when this kind was last timed, and that choice's mean
    # step seconds then (`CostModel._drift`); None while there was no comparable choice.
    ref_kind: str | None = None
    ref_seconds: float = 0.0
    # EWMAs of the squared deviations from the means (`spread`)
    var_seconds: float = 0.0
    var_tokens: float = 0.0
    weight_seconds: float = 0.0  # the weight the seconds' latest sample got

    def observe(
        self, seconds: float, tokens: int, weight: float, ref: tuple[str, float] | None = None
    ) -> None:
        """One sample. After the seconds' mean went stale (`stale`), it and the next
        samples are averaged evenly, as if it were one sample of them, until `weight`
        gives a sample more; the tokens' mean always moves by `weight`. `ref`: the
        class's current choice and its mean step seconds now, averaged into
        `ref_seconds` with the seconds' own weights (so the two describe the same
        moments), or restarting it when the choice was another."""
        self.last_seconds = seconds
        if self.samples == 0:
            w = 1.0
        elif self.fresh is None:
            w = weight
        else:
            w = max(weight, 1.0 / (self.fresh + 2))
            self.fresh += 1
        d = seconds - self.seconds
        self.seconds += w * d
        self.weight_seconds = w
        self.var_seconds = (1.0 - w) * (self.var_seconds + w * d * d)
        if ref is None:
            self.ref_kind, self.ref_seconds = None, 0.0
        elif self.samples and self.ref_kind == ref[0]:
            self.ref_seconds += w * (ref[1] - self.ref_seconds)
        else:
            self.ref_kind, self.ref_seconds = ref
        w = 1.0 if self.samples == 0 else weight
        d = tokens - self.tokens
        self.tokens += w * d
        self.var_tokens = (1.0 - w) * (self.var_tokens + w * d * d)
        self.samples += 1

    def spread(self, weight: float) -> float:
        """The rate's relative standard error, as far as the steps' own scatter makes
        it: each mean's squared coefficient of variation times an EWMA's share of one
        sample's variance, w / (2 - w) for weight w. Plain decoding's steps scatter by
        a few percent; a TriSpec step at batch 1 takes a proxy pass (0.06 s on a 2-core
        CPU) or a proxy and a target pass (0.2 s), and its rate's mean moved by 15-20%
        within a few steps."""
        if self.seconds <= 0 or self.tokens <= 0:
            return 0.0
        ws = min(max(weight, self.weight_seconds), 1.0)  # larger while re-basing (`stale`)
        cv2_seconds = self.var_seconds / self.seconds**2 * ws / (2.0 - ws)
        cv2_tokens = self.var_tokens / self.tokens**2 * weight / (2.0 - weight)
        return (cv2_seconds + cv2_tokens) ** 0.5

    def stale(self) -> None:
        """The seconds' mean describes an earlier state of the machine: the next
        samples outweigh it sooner than `weight` would let them (one outlier among them
        must not replace it: the first fresh sample gets half). Not the tokens' mean:
        tokens per step follow the workload's acceptance, not the machine's drift,
        and vary from step to step (an SD step at batch 1 emits 1 to k + 1), so one
        step re-basing it put a kept SD rate of 21.5 tok/s at 5.5."""
        self.fresh = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CostModel:
    """Measured cost of each step kind per batch-size class, and the choice.

    Kinds are run in runs of `run_length` steps (warm-up and exploration alike), and
    only steps that follow a step of the same kind are measured: the first step after
    a switch pays for the kind before it (the target's or the proxy's catch-up), so
    timing it would charge one kind for another's deferred work."""

    kinds: tuple[str, ...] = ("trispec", "sd", "plain")  # the candidates (`step_kinds`)
    warmup: int = 3  # measured steps of each kind before exploiting
    explore_every: int = 48  # then one run in this many decisions tries another kind
    run_length: int = 4  # steps a warm-up or exploration run lasts
    weight: float = 0.2  # EWMA weight of a new sample
    plain_margin: float = 0.05  # a speculative kind must beat plain by this share
    switch_margin: float = 0.05  # another kind must beat the class's choice by this share
    lossy_margin: float = 0.10  # the TriSpec step must beat the exact kinds by this share
    abandon: float = 0.5  # a run stops once its kind is measured below this share of another
    # ... and a run of SD or plain decoding below this share: their steps vary with the
    # machine's noise only, a TriSpec step's with its routing (a step the proxy completes
    # costs a fraction of one the target verifies), so one of theirs says more
    abandon_uniform: float = 0.8
    max_backoff: int = 8  # exploration intervals grow up to this many times explore_every
    # No run (warm-up, exploration, re-measurement) starts in a draining tail (`_tail`)
    # that can take fewer steps than this: too few to use what the run would measure.
    min_horizon: int = 32
    # A kind's means are stale once its class made this many decisions without a step
    # of it (or when they were restored from an earlier engine): the class does not
    # switch to it on them, it re-measures it first, and the run re-bases its step time.
    stale_after: int = 48
    # From this batch-size class on, some request escalates in nearly every TriSpec step
    # (the target ran in 96-100% of them at batch 8 and 32, lambda 0.5, on the real
    # pair), so a TriSpec step costs an SD step plus a proxy pass (see _after_sd).
    escalates_from: int = 8
    # A kind not chosen is scored with its step seconds scaled by how much the chosen
    # kind's have moved since it was timed (`_drift`), within this factor either way.
    max_drift: float = 2.0
    # Against the class's current choice, another kind's rate counts this many of its
    # standard errors lower (`KindStats.spread`; 0: at its mean).
    confidence: float = 1.0
    # Runs that learn (warm-ups after the first choice, explorations, re-measurements)
    # start only while the class's regret is within this share of its seconds; the share
    # halves, down to `min_budget`, each time such a run leaves the choice as it was.
    explore_budget: float = 0.05
    min_budget: float = 0.02
    budget: dict[int, float] = field(default_factory=dict)  # class -> its share now
    learned: dict[int, bool] = field(default_factory=dict)  # class -> a learning run ran
    regret: dict[int, float] = field(default_factory=dict)  # class -> seconds charged
    spent: dict[int, float] = field(default_factory=dict)  # class -> decoding seconds
    learning_choice: bool = False  # the latest decision is a step of a learning run
    # (class, kind) -> the regret its latest learning run was charged, the step after it
    # included: what the next such run is expected to cost (`over_budget`)
    run_cost: dict[tuple[int, str], float] = field(default_factory=dict)
    # class -> whether its last step was a learning run's or a warm-up's (None: neither)
    after_learning: dict[int, str | None] = field(default_factory=dict)
    stats: dict[tuple[int, str], KindStats] = field(default_factory=dict)
    # class -> the TriSpec step's means over its steps with drafts only (`_rated`)
    drafted: dict[int, KindStats] = field(default_factory=dict)
    # classes whose TriSpec step is tried on drafted steps again (`_unrated`): at batch 1
    # a request joining is a new workload, and how often its proxy trusts whole drafts
    # is its own (on the real pair, code prompts 4 tokens a step, chat prompts about 1)
    retry: set[int] = field(default_factory=set)
    chosen: dict[str, int] = field(default_factory=dict)  # counts, for the metrics
    objectives: dict[str, int] = field(default_factory=dict)  # decisions per objective
    # class -> (kind, steps left, its samples when the run began)
    runs: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    since: dict[int, int] = field(default_factory=dict)  # class -> decisions since exploring
    interval: dict[int, int] = field(default_factory=dict)  # class -> current interval
    decisions: dict[int, int] = field(default_factory=dict)  # class -> decisions made
    # (class, kind) -> the class's decision count at the kind's latest timed step
    measured_at: dict[tuple[int, str], int] = field(default_factory=dict)
    explored: dict[int, bool] = field(default_factory=dict)  # class -> explored since last pick
    # (class, kind) whose run a draining decision stopped (`_run_lost`): its warm-up is
    # not restarted (exploration still re-tries it). Ranked by the slowest request's
    # pace, which starts from `prior_steps` steps, one step's tokens move a score
    # little; by throughput at batch 1 one SD step's 1 to k + 1 tokens would decide.
    cut: set[tuple[int, str]] = field(default_factory=set)
    # The requests of the latest decision, and the largest class their batch was in
    # since a request last joined it (`_tail`).
    batch_ids: frozenset[str] = frozenset()
    batch_peak: int = 0
    best: dict[int, str] = field(default_factory=dict)  # class -> kind last exploited
    last: dict[int, str] = field(default_factory=dict)  # class -> kind of its last step
    run_steps: dict[int, int] = field(default_factory=dict)  # class -> steps of that kind's run
    # class -> (seconds of the step after a TriSpec run, that run's steps, the excess
    # of the run's first step), until the next step of the same kind shows how long
    # such a step takes without the catch-up
    owed: dict[int, tuple[float, int, float]] = field(default_factory=dict)
    # class -> seconds of a TriSpec run's first step (the proxy's catch-up), until the
    # run's next step shows how long one takes without it; then that step's excess
    entered: dict[int, float] = field(default_factory=dict)
    entry_excess: dict[int, float] = field(default_factory=dict)
    # Called with (class, kind, each candidate's measured tok/s, objective) when the
    # choice for a class, set of candidates and objective changes (`reported`: the
    # last choice per such triple). The objective is "throughput", "slowest request" or
    # "one request" (batch 1, where the two agree).
    on_change: Callable[[int, str, dict[str, float], str], None] | None = None
    reported: dict[tuple[int, tuple[str, ...], str], str] = field(default_factory=dict)
    prior_steps: int = 4  # a request's pace starts as this many steps of one token
    # class -> (the decision count from which a run of a DRAFTED kind may start again
    # in a draining batch, the wait that set it; `_barred`)
    bare: dict[int, tuple[int, int]] = field(default_factory=dict)
    # kind -> request -> (tokens emitted, steps) in steps of that kind
    paces: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def observe(
        self,
        kind: str,
        num_reqs: int,
        seconds: float,
        tokens: int,
        per_request: dict[str, int] | None = None,
        drafted: bool = False,
        learning: bool | None = None,
    ) -> None:
        """Book one decoding step of `kind` over `num_reqs` requests (`per_request`:
        the tokens each request emitted, for the paces of speculative kinds; `drafted`:
        the drafter had drafts in the step; `learning`: the step's decision was a
        learning run's, `learning_choice` when it was made; None: the latest decision's,
        for callers that observe each step before the next decision)."""
        if kind not in self.kinds or seconds <= 0:
            return
        if per_request and kind != "plain":  # plain decoding's pace is 1 by definition
            paces = self.paces.setdefault(kind, {})
            for req, n in per_request.items():
                done, steps = paces.get(req, (0, 0))
                paces[req] = (done + n, steps + 1)
        cls = size_class(num_reqs)
        previous, self.last[cls] = self.last.get(cls), kind
        self._charge_regret(
            cls,
            self.learning_choice if learning is None else learning,
            seconds,
            tokens,
            kind,
            previous,
        )
        steps = self.run_steps.get(cls, 0)
        self.run_steps[cls] = 1 if previous != kind else steps + 1
        owed = self.owed.pop(cls, None)
        entered = self.entered.pop(cls, None)
        if previous != kind:
            # A switch: this step paid for the previous kind's deferred work, or (into
            # a TriSpec step) for the proxy's catch-up over the steps it did not run.
            if owed is not None:  # no step of the kind after the run to compare with
                self._charge_deferred(cls, owed[2], owed[1])
            if previous == DEFERS and steps:
                self.owed[cls] = (seconds, steps, self.entry_excess.pop(cls, 0.0))
            elif previous in ENTERS and steps:  # a draft run: only its entry to book
                self._charge_deferred(cls, self.entry_excess.pop(cls, 0.0), steps, previous)
            if kind in ENTERS:
                self.entered[cls] = seconds
            return
        if owed is not None:
            self._charge_deferred(cls, owed[0] - seconds + owed[2], owed[1])
        if entered is not None:
            self.entry_excess[cls] = max(entered - seconds, 0.0)
        st = self.stats.setdefault((cls, kind), KindStats())
        stale = st.samples and self._stale(cls, kind)
        if stale:
            st.stale()
        current = self.best.get(cls, kind)
        now = self.stats.get((cls, current))
        ref = None
        if current not in (kind, DEFERS) and now is not None and now.samples:
            ref = (current, now.seconds)
        st.observe(seconds, tokens, self.weight, ref)
        if kind == DEFERS and drafted:
            mine = self.drafted.setdefault(cls, KindStats())
            if stale and mine.samples:
                mine.stale()
            mine.observe(seconds, tokens, self.weight, ref)
        self.measured_at[(cls, kind)] = self.decisions.get(cls, 0)

    def _charge_regret(
        self,
        cls: int,
        learning: bool,
        seconds: float,
        tokens: int,
        kind: str,
        previous: str | None,
    ) -> None:
        """Book a step's seconds on its class and, for a step of a learning run or the
        first step after one (it pays the run's catch-up), their excess over the
        class's choice's measured rate; also on the run's kind (`run_cost`), and there
        for the warm-ups before the class's first choice as well, against plain
        decoding's rate (warmed up first): those are not charged, but tell what the
        kind's next run will cost. The step after a run is the run's, as is a switch
        step out of a TriSpec run (it pays the target's catch-up) even where it starts
        another run."""
        self.spent[cls] = self.spent.get(cls, 0.0) + seconds
        state = "learning" if learning else None if cls in self.best else "warming"
        after, self.after_learning[cls] = self.after_learning.get(cls), state
        if state is None and after is None:
            return
        reference = self.best.get(cls) or self._baseline(cls)
        st = self.stats.get((cls, reference)) if reference is not None else None
        if st is None or st.rate <= 0:
            return
        excess = max(seconds - tokens / st.rate, 0.0)
        if "learning" in (state, after):
            self.regret[cls] = self.regret.get(cls, 0.0) + excess
        pays_for_previous = after and kind != previous and previous == DEFERS
        owner = kind if state and not pays_for_previous else previous
        if owner is not None and owner != reference:
            key = (cls, owner)
            self.run_cost[key] = self.run_cost.get(key, 0.0) + excess

    def _baseline(self, cls: int) -> str | None:
        """Plain decoding, once warmed up in the class (None before, or where it is
        no candidate)."""
        st = self.stats.get((cls, "plain"))
        return "plain" if st is not None and st.samples >= self.warmup else None

    def over_budget(self, cls: int, kind: str | None = None) -> bool:
        """Whether no learning run (of `kind`, or of any kind) may start in the class
        now: never before its first choice; otherwise once its regret, with what
        `kind`'s latest learning run cost (`run_cost`), is over its budget share of
        its decoding seconds (`explore_budget`). Counting the run's expected cost keeps
        a run from starting that would overshoot: at batch 1 on a 2-core AVX2 CPU a
        TriSpec re-try pays two catch-ups of 3.6-6.3 s and 3.9 s, and with the regret
        alone checked a round of four requests was charged 9.2 s over 119 s (7.7%)."""
        if cls not in self.best:
            return False
        budget = self.budget.get(cls, self.explore_budget)
        expected = self.run_cost.get((cls, kind), 0.0) if kind is not None else 0.0
        return self.regret.get(cls, 0.0) + expected > budget * self.spent.get(cls, 0.0)

    def _held(self, cls: int, options: Sequence[str]) -> tuple[str, ...]:
        """The kinds of `options` whose learning run the budget holds (`over_budget`)."""
        return tuple(k for k in options if self.over_budget(cls, k))

    def _drift(self, cls: int, kind: str) -> float:
        """How much slower the machine runs now than when `kind` was last timed, as the
        class's current choice measures it: its mean step seconds now over its mean
        then (1.0 for the choice itself, for a kind timed under another choice, or
        while the choice is the TriSpec step, whose step time follows its routing
        more than the machine). Means of kinds not chosen stand still while the
        chosen kind's follow the machine step by step: on a 2-core CPU at batch 1,
        six plain steps slowed by a neighbour (0.23 s against 0.14 s) put plain
        decoding's mean under a TriSpec rate timed before them, and 25 lossy TriSpec
        steps followed, no faster. Scaled, kinds are compared as if timed together."""
        current = self.best.get(cls)
        st = self.stats.get((cls, kind))
        now = self.stats.get((cls, current)) if current is not None else None
        if (
            current in (None, kind, DEFERS)
            or st is None
            or st.ref_kind != current
            or st.ref_seconds <= 0
            or now is None
            or now.seconds <= 0
        ):
            return 1.0
        return min(max(now.seconds / st.ref_seconds, 1.0 / self.max_drift), self.max_drift)

    def _rebase(self, cls: int, new: str) -> None:
        """Carry the drift references over when the class's choice moves to `new`: its
        own mean takes on the drift it was scored with (it is the reference from now
        on), the kind it replaces is referred to it as of now, and every kind referred
        to the old choice is referred to the new one with the same scale. On the first
        choice every measured kind is referred to it (all were timed in the warm-up,
        just before); into or out of a TriSpec choice nothing carries over. Not
        called where the choice moves only because the candidates did (the drafter
        found nothing and SD was the choice): no kind was measured against another."""
        old = self.best.get(cls)
        mine = self.stats.get((cls, new))
        if old == new or mine is None or not mine.samples:
            return
        mine.seconds *= self._drift(cls, new)
        before = self.stats.get((cls, old)) if old is not None else None
        for (c, k), st in self.stats.items():
            if c != cls or k == new or not st.samples:
                continue
            if new == DEFERS or old == DEFERS:
                st.ref_kind, st.ref_seconds = None, 0.0
            elif old is None or k == old:
                st.ref_kind, st.ref_seconds = new, mine.seconds
            elif st.ref_kind == old and before is not None and before.seconds > 0:
                st.ref_seconds = mine.seconds * st.ref_seconds / before.seconds
                st.ref_kind = new

    def _stale(self, cls: int, kind: str) -> bool:
        """Whether a kind's means in a class are from an earlier state of the machine:
        restored from an earlier engine, or not timed in its last `stale_after`
        decisions. Plain decoding's means follow the machine's drift step by step
        while it is chosen; a kind last measured minutes ago does not, and on a
        2-core CPU at batch 8 kept SD rates out-ranked plain decoding's drifting one,
        each SD step that followed slower than a plain one."""
        at = self.measured_at.get((cls, kind))
        return at is None or self.decisions.get(cls, 0) - at > self.stale_after

    def _charge_deferred(self, cls: int, excess: float, steps: int, kind: str = DEFERS) -> None:
        """Book on the TriSpec step the switches its run of `steps` steps caused: the
        proxy's catch-up in the run's first step (over the tokens other kinds emitted
        since it last ran) and the target's catch-up in the first step after it (over
        the tokens the proxy alone completed). Within a long run the target's catch-up
        is paid by later TriSpec steps (and timed); a short run (warm-up, exploration)
        leaves both to the switch steps, which are not timed, so without this its steps
        look cheaper than TriSpec steps are. `excess` is the switch steps' time over
        the next step of the same kind each; spread over the run, it is added to the
        TriSpec step's mean seconds. A draft run's first step pays the proxy's catch-up
        too (its first drafting pass), booked on the draft kind (`kind`) alike."""
        if excess <= 0:
            return
        drafted = self.drafted.get(cls) if kind == DEFERS else None
        for mine in (self.stats.get((cls, kind)), drafted):
            if mine is not None and mine.samples:
                mine.seconds += excess / steps

    def choose(
        self,
        num_reqs: int,
        allowed: tuple[str, ...] | None = None,
        req_ids: list[str] | None = None,
        waiting: bool = True,
        horizon: int | None = None,
        undrafted: bool = False,
    ) -> str:
        """The kind for the next step over `num_reqs` requests (among `allowed`).
        With `req_ids` and nothing `waiting`, kinds rank by the pace of the batch's
        slowest request; otherwise by throughput. `horizon`: the most steps the batch
        can still take (None: unbounded; see `_tail`). `undrafted`: the drafter left
        some request of the batch without a draft (`_barred`)."""
        options = [k for k in self.kinds if allowed is None or k in allowed]
        if not options:
            raise ValueError("no step kind allowed")
        if req_ids:
            self._forget_all_but(req_ids)
        cls = size_class(num_reqs)
        joined = self._joined(req_ids)
        if joined:
            self.bare.clear()  # a request joined: its drafts are not known
            if req_ids and cls == 1 and cls in self.drafted:
                self.retry.add(cls)
                self.drafted[cls].stale()
        self.batch_peak = self._peak(cls, joined)
        self.batch_ids = frozenset(req_ids or ())
        tail = self._tail(cls, self.batch_peak, horizon)
        self.decisions[cls] = self.decisions.get(cls, 0) + 1
        objective = (  # (for the metrics; at batch 1 the two measures agree)
            "one request"
            if num_reqs == 1
            else "slowest request"
            if self._draining(num_reqs, req_ids, waiting)
            else "throughput"
        )
        self.objectives[objective] = self.objectives.get(objective, 0) + 1
        stats = {k: self.stats.get((cls, k), KindStats()) for k in options}
        scored = self._scorer(cls, num_reqs, req_ids, waiting, options)
        run = self.runs.pop(cls, None)
        if run is not None and run[1] > 0 and run[0] in options:
            kind, left, at_start = run
            fresh = stats[kind].samples > at_start  # measured in this run
            if not (fresh and self._run_lost(cls, kind, options, scored)):
                self.runs[cls] = (kind, left - 1, at_start)
                return self._chose(kind, learning=cls in self.best)
            if self._draining(num_reqs, req_ids, waiting):
                self.cut.add((cls, kind))
        if tail:  # the class's best measured kind, nothing to learn here
            return self._chose(self._ranked(cls, options, {k: scored(k) for k in options})[0])
        barred = self._barred(cls, num_reqs, req_ids, waiting, undrafted, self.decisions[cls])
        held = self._held(cls, options)  # (no back-off for these: the budget holds them)
        warming = self._warming(cls, options, stats, scored)
        if barred and undrafted and any(k in barred and k not in held for k in warming):
            self._back_off(cls)
        barred = tuple(dict.fromkeys((*barred, *held)))
        warming = [k for k in warming if k not in barred]
        if warming:
            order = self._warm_order(cls)
            return self._run(cls, min(warming, key=lambda k: (stats[k].samples, order(k))), options)
        score = {k: scored(k) for k in options}
        ranked = self._ranked(cls, options, score)
        if self.explored.pop(cls, False):
            # Back off while exploring keeps confirming the choice; reset when it moved it.
            kept = self.best.get(cls) == ranked[0]
            interval = self.interval.get(cls, self.explore_every)
            self.interval[cls] = (
                min(2 * interval, self.max_backoff * self.explore_every)
                if kept
                else self.explore_every
            )
        if self.learned.pop(cls, False):  # likewise the budget, from the first choice on
            budget = self.budget.get(cls, self.explore_budget)
            self.budget[cls] = (
                max(budget / 2, self.min_budget)
                if self.best.get(cls) == ranked[0]
                else self.explore_budget
            )
        refresh = self._refresh(cls, ranked)
        if refresh in barred and refresh not in held and undrafted:
            self._back_off(cls)
        refresh = self._unless_barred(cls, refresh, ranked, barred)
        if refresh is not None:  # an exploration of it, before any switch
            self.since[cls] = 0
            self.explored[cls] = True
            return self._run(cls, refresh, options)
        context = (cls, tuple(options), objective)  # without drafts, SD is no candidate
        if self.reported.get(context) != ranked[0] and self.on_change is not None:
            self.on_change(cls, ranked[0], {k: round(score[k], 2) for k in options}, objective)
        self.reported[context] = ranked[0]
        if self.best.get(cls) in (None, *options):  # not a change of candidates only
            self._rebase(cls, ranked[0])
        self.best[cls] = ranked[0]
        others = self._to_explore(cls, ranked, scored)
        if undrafted and any(k in barred and k not in held for k in others):
            self._back_off(cls)  # (the exploration stays due: `since` is not reset)
        others = [k for k in others if k not in barred]
        if others:  # exploring: the one timed longest ago (a run lost at once is one step)
            self.since[cls] = 0
            self.explored[cls] = True
            last = self.measured_at
            return self._run(
                cls, min(others, key=lambda k: (last.get((cls, k), -1), stats[k].samples)), options
            )
        self.since[cls] = self.since.get(cls, 0) + 1
        return self._chose(ranked[0])

    def settled(
        self,
        num_reqs: int,
        allowed: tuple[str, ...],
        req_ids: list[str] | None = None,
        waiting: bool = True,
        horizon: int | None = None,
    ) -> str | None:
        """The kind the next decision over `allowed` will make, when it is sure to be
        the class's current choice: no run under way, nothing to warm up, no
        exploration due (None otherwise). It changes nothing. The engine asks before
        the drafter proposes: where plain decoding is settled at every set of
        candidates the drafts could leave, the drafter need not run (at batch 64 on a
        2-core CPU the ngram drafter cost 2.35 s of a 135 s batch decoded plainly)."""
        options = [k for k in self.kinds if k in allowed]
        cls = size_class(num_reqs)
        run = self.runs.get(cls)
        if not options or (run is not None and run[1] > 0):
            return None
        stats = {k: self.stats.get((cls, k), KindStats()) for k in options}
        scored = self._scorer(cls, num_reqs, req_ids, waiting, options)
        joined = self._joined(req_ids)
        tail = self._tail(cls, self._peak(cls, joined), horizon)
        decision = self.decisions.get(cls, 0) + 1
        barred = () if joined else self._barred(cls, num_reqs, req_ids, waiting, False, decision)
        barred = tuple(dict.fromkeys((*barred, *self._held(cls, options))))
        if not tail and any(k not in barred for k in self._warming(cls, options, stats, scored)):
            return None
        ranked = self._ranked(cls, options, {k: scored(k) for k in options})
        refresh = self._unless_barred(cls, self._refresh(cls, ranked), ranked, barred)
        explore = [k for k in self._to_explore(cls, ranked, scored) if k not in barred]
        if not tail and (explore or refresh is not None):
            return None
        return ranked[0]

    def _joined(self, req_ids: list[str] | None) -> bool:
        """Whether a request of `req_ids` was not in the latest decision's batch."""
        return not (req_ids and set(req_ids) <= self.batch_ids)

    def _peak(self, cls: int, joined: bool) -> int:
        """The largest class the batch has been in since a request last joined it
        (this class when one just did, `_joined`)."""
        return cls if joined else max(self.batch_peak, cls)

    def _unless_barred(
        self, cls: int, refresh: str | None, ranked: list[str], barred: tuple[str, ...]
    ) -> str | None:
        """`refresh` (`_refresh`), or None where it is barred (`_barred`): then no
        re-measurement now and no switch before one, so the class's current choice is
        put back first in `ranked`."""
        if refresh is None or refresh not in barred:
            return refresh
        ranked.remove(self.best[cls])
        ranked.insert(0, self.best[cls])
        return None

    def _tail(self, cls: int, peak: int, horizon: int | None) -> bool:
        """Whether a decision is in a batch's draining tail, where no run pays: under
        `min_horizon` steps left (`horizon`, None while requests wait) in a class below
        the batch's `peak` (`_peak`). A class a batch starts in is measured whatever
        its horizon: the next batch of short requests starts there again (a stream
        of 16-token requests one at a time would otherwise never speculate)."""
        return horizon is not None and horizon < self.min_horizon and cls < peak

    def _refresh(self, cls: int, ranked: list[str]) -> str | None:
        """The kind to re-measure in a run before the class switches to it: ranked
        above the class's current choice on stale means (`_stale`). A switch needs
        fresh evidence; the run re-bases the kind's mean step time on its own steps."""
        current, top = self.best.get(cls), ranked[0]
        if current is None or current == top or current not in ranked:
            return None
        return top if self._stale(cls, top) else None

    def _barred(
        self,
        cls: int,
        num_reqs: int,
        req_ids: list[str] | None,
        waiting: bool,
        undrafted: bool,
        decision: int,
    ) -> tuple[str, ...]:
        """The kinds no run may start for at `decision` of the class: in a draining
        batch, where the drafter left a request without a draft, or while an earlier
        such step's wait lasts (`_back_off`), SD, and the TriSpec step from
        `escalates_from` on. (Below it the proxy alone may complete a request without
        drafts, with its own next token, so a TriSpec step can beat a plain one there
        whatever the drafts.)"""
        if not self._draining(num_reqs, req_ids, waiting):
            return ()
        until, _ = self.bare.get(cls, (0, 0))
        if not (undrafted or decision < until):
            return ()
        return DRAFTED if cls >= self.escalates_from else ("sd",)

    def _back_off(self, cls: int) -> None:
        """A run of a DRAFTED kind was due and a request had no draft: bar such runs
        for the class's next decisions, twice as many as last time (1 at first, at
        most `explore_every`)."""
        until, wait = self.bare.get(cls, (0, 0))
        now = self.decisions.get(cls, 0)
        if until == now + wait + 1:  # set at this decision already
            return
        wait = min(max(2 * wait, 1), self.explore_every)
        self.bare[cls] = (now + wait + 1, wait)

    def _draining(self, num_reqs: int, req_ids: list[str] | None, waiting: bool) -> bool:
        """Whether a decision ranks by the slowest request's pace (none waits)."""
        return not waiting and bool(req_ids) and num_reqs > 1

    def _scorer(
        self,
        cls: int,
        num_reqs: int,
        req_ids: list[str] | None,
        waiting: bool,
        options: list[str],
    ) -> Callable[[str], float]:
        """A kind's measured rate by the objective of this decision."""
        draining = self._draining(num_reqs, req_ids, waiting)

        def scored(kind: str) -> float:
            st = self._rated(cls, kind, options)
            rate = self._slowest_rate(kind, st, req_ids) if draining else st.rate
            return rate / self._drift(cls, kind)

        return scored

    def _warming(
        self,
        cls: int,
        options: list[str],
        stats: dict[str, KindStats],
        scored: Callable[[str], float],
    ) -> list[str]:
        """Kinds still to warm up: under `warmup` samples, not a kind that already
        lost or whose run a draining decision stopped (exploration still re-tries it)."""
        return [
            k
            for k in options
            if (stats[k].samples < self.warmup or self._unrated(cls, k, options))
            and (cls, k) not in self.cut
            and not self._clearly_slower(cls, k, options)
            and not self._held_back(cls, k, scored)
        ]

    def _drafted_decision(self, options: Sequence[str]) -> bool:
        """Whether a decision is made with drafts in the batch (SD among `options`)."""
        return "sd" in self.kinds and "sd" in options

    def _rated(self, cls: int, kind: str, options: Sequence[str]) -> KindStats:
        """The means a kind is rated by in a decision among `options`: for the TriSpec
        step where the drafter has drafts, its steps with drafts, once it has some.
        Its means over all its steps mix in those without drafts, where it emits one
        token a request at most (at batch 1 on a 2-core CPU, a code prompt: its warm-up
        on steps without drafts measured about 10 tok/s against SD's 25 on drafted
        ones, and 35 SD steps of 0.15 s followed where a TriSpec step, its proxy
        trusting the same four tokens, took 0.07 s)."""
        if kind == DEFERS and self._drafted_decision(options):
            mine = self.drafted.get(cls)
            if mine is not None and mine.samples:
                return mine
        return self.stats.get((cls, kind), KindStats())

    def _unrated(self, cls: int, kind: str, options: Sequence[str]) -> bool:
        """The TriSpec step in a decision with drafts, never run on drafted steps of
        the class, or not since a request joined at batch 1 (`retry`): one warm-up run
        for it (`_run` marks it tried)."""
        if kind != DEFERS or not self._drafted_decision(options):
            return False
        return cls not in self.drafted or cls in self.retry

    def _ranked(self, cls: int, options: list[str], score: dict[str, float]) -> list[str]:
        """Options by rate, plain decoding and the class's current choice favoured by
        their margins (each switch pays a catch-up no timing sees); among equal rates
        the kind doing less work first. Against a current choice, another kind counts
        with its rate less `confidence` standard errors (`KindStats.spread`; at most
        half): a lead its own steps' scatter explains moves nothing (at batch 1 on a
        2-core CPU TriSpec and plain decoding traded places four times in 14 steps on
        it)."""
        bonus = {"plain": 1.0 + self.plain_margin, DEFERS: 1.0 / (1.0 + self.lossy_margin)}
        current = self.best.get(cls)
        if current in options:
            bonus[current] = bonus.get(current, 1.0) * (1.0 + self.switch_margin)
            for k in options:
                st = self.stats.get((cls, k))
                if k != current and st is not None:
                    doubt = min(self.confidence * st.spread(self.weight), 0.5)
                    bonus[k] = bonus.get(k, 1.0) * (1.0 - doubt)
        return sorted(
            options,
            key=lambda k: (score[k] * bonus.get(k, 1.0), -WORK.index(k)),
            reverse=True,
        )

    def _to_explore(self, cls: int, ranked: list[str], scored: Callable[[str], float]) -> list[str]:
        """The kinds the class's next decision may explore: none before its interval
        is up, and a kind that lost at a smaller batch only at the longest interval."""
        since = self.since.get(cls, 0) + 1
        if since < self.interval.get(cls, self.explore_every):
            return []
        longest = since >= self.max_backoff * self.explore_every
        return [k for k in ranked[1:] if longest or not self._held_back(cls, k, scored)]

    def _slowest_rate(self, kind: str, st: KindStats, req_ids: list[str]) -> float:
        """Tokens/s of the batch's slowest request on steps of `kind`: its running mean
        of tokens per such step (`prior_steps` of one token, the least any step gives,
        to start with) over the kind's step seconds. Plain decoding emits one token per
        request. The prior is not the class's mean: the batch's slowest request is
        below it, and a newcomer has shown no draft it accepts."""
        if st.seconds <= 0:
            return 0.0
        if kind == "plain":
            return 1.0 / st.seconds
        paces = self.paces.get(kind, {})
        prior = self.prior_steps
        slowest = min(
            (done + prior) / (steps + prior)
            for done, steps in (paces.get(r, (0, 0)) for r in req_ids)
        )
        return slowest / st.seconds

    def _forget_all_but(self, req_ids: list[str]) -> None:
        """Drop the paces of requests no longer in the batch (finished or preempted)."""
        live = set(req_ids)
        for paces in self.paces.values():
            for r in [r for r in paces if r not in live]:
                del paces[r]

    def _clearly_slower(self, cls: int, kind: str, options: Sequence[str]) -> bool:
        """Measured (as `_rated`), and at under `abandon` times another measured
        kind's rate: no need to finish its warm-up, each step of which costs."""
        if self._unrated(cls, kind, options):
            return False
        st = self._rated(cls, kind, options)
        if not st.samples:
            return False
        rated = (self._rated(cls, k, options) for k in options if k != kind)
        best = max((o.rate for o in rated if o.samples), default=0.0)
        return st.rate < self.abandon * best

    def _run_lost(
        self, cls: int, kind: str, options: Sequence[str], scored: Callable[[str], float]
    ) -> bool:
        """Whether a run's latest step puts its kind under `abandon` (a TriSpec run) or
        `abandon_uniform` (SD, plain) times another measured kind, by the decision's
        objective (`scored`, with the latest step's seconds in place of the kind's
        mean): the run stops there, each of its steps costs."""
        st = self._rated(cls, kind, options)
        if not st.samples or st.last_seconds <= 0:
            return False
        latest = scored(kind) * st.seconds / st.last_seconds
        measured = (k for k in options if k != kind and self._rated(cls, k, options).samples)
        best = max((scored(k) for k in measured), default=0.0)
        share = self.abandon if kind == DEFERS else self.abandon_uniform
        return latest < share * best

    def _warm_order(self, cls: int) -> Callable[[str], int]:
        """Plain decoding first (the baseline). Below `escalates_from` the TriSpec step
        next, so that the run after its short warm-up run is another kind's, whose first
        step books the catch-up it left (_charge_deferred); from there on SD before it,
        which decides whether it is warmed up at all (_after_sd)."""
        if cls >= self.escalates_from:
            return lambda k: WORK.index(k) if k in WORK else len(WORK)
        return lambda k: -1 if k == "plain" else self.kinds.index(k)

    def _held_back(self, cls: int, kind: str, scored: Callable[[str], float]) -> bool:
        """Not warmed up here, and explored only at the longest interval."""
        return self._lost_below(cls, kind) or not self._after_sd(cls, kind, scored)

    def _after_sd(self, cls: int, kind: str, scored: Callable[[str], float]) -> bool:
        """Whether the TriSpec step may be warmed up at a class from `escalates_from` on:
        only once SD has been measured there, and not when plain decoding beat it. At
        such a batch a TriSpec step runs the target anyway, so it costs an SD step plus
        a proxy pass (and its first run, a proxy catch-up over every request's context):
        where SD lost to plain decoding, so does it. (At batch 1 the proxy alone
        completes many steps, and TriSpec can win where SD loses.) SD and plain are
        compared by this decision's objective (`scored`): at batch 64 on a 2-core CPU
        SD out-ran plain decoding in throughput while its slowest request fell behind,
        and the one TriSpec warm-up step that let through took a quarter of the
        batch's time."""
        if kind != DEFERS or cls < self.escalates_from or "sd" not in self.kinds:
            return True
        sd = self.stats.get((cls, "sd"))
        if sd is None or not sd.samples or self._stale(cls, "sd"):
            return False  # SD's stale means are re-measured before they count
        if "plain" not in self.kinds:
            return True
        plain = self.stats.get((cls, "plain"))
        return (
            plain is not None
            and plain.samples > 0
            and scored("sd") > scored("plain") * (1.0 + self.plain_margin)
        )

    def _lost_below(self, cls: int, kind: str) -> bool:
        """Whether a kind that does less work than `kind` (`LESS_WORK`) was measured
        ahead of it at a smaller batch-size class. Speculation pays less as the batch
        grows (each pass gets more compute-bound), so such a kind is not warmed up
        here: at a large batch a warm-up run of the TriSpec step would cost a proxy
        catch-up over every request's context, to learn what the smaller batch
        already showed. Only classes where both kinds finished warming up count."""
        less = LESS_WORK.get(kind, ())
        for (c, k), st in self.stats.items():
            if c >= cls or k not in less:
                continue
            mine = self.stats.get((c, kind))
            if st.samples < self.warmup or mine is None or mine.samples < self.warmup:
                continue
            bonus = 1.0 + self.plain_margin if k == "plain" else 1.0
            if st.rate * bonus >= mine.rate:
                return True
        return False

    def _run(self, cls: int, kind: str, options: Sequence[str]) -> str:
        if kind in DRAFTED:
            self.bare.pop(cls, None)  # every request had drafts: the wait starts over
        if kind == DEFERS and self._drafted_decision(options):
            self.drafted.setdefault(cls, KindStats())  # tried on drafted steps (`_unrated`)
            self.retry.discard(cls)
        at_start = self.stats.get((cls, kind), KindStats()).samples
        self.runs[cls] = (kind, self.run_length - 1, at_start)
        learning = cls in self.best  # (before a class's first choice: a warm-up)
        if learning:
            self.learned[cls] = True
        self.run_cost[(cls, kind)] = 0.0  # this run's cost, from here on
        return self._chose(kind, learning=learning)

    def _chose(self, kind: str, learning: bool = False) -> str:
        self.chosen[kind] = self.chosen.get(kind, 0) + 1
        self.learning_choice = learning
        return kind

    def snapshot(self) -> dict:
        """What a later engine on the same models and hardware may start from: each
        class's measured kinds, exploration interval and budget, and what each kind's
        latest learning run cost (`restore`). Not the requests' paces nor runs under
        way: those belong to this engine's batch."""
        return {
            "stats": [
                [cls, kind, st.seconds, st.tokens, st.samples]
                for (cls, kind), st in sorted(self.stats.items())
                if st.samples and st.seconds > 0
            ],
            "interval": {str(cls): n for cls, n in sorted(self.interval.items())},
            "budget": {str(cls): b for cls, b in sorted(self.budget.items())},
            "run_cost": [[cls, kind, c] for (cls, kind), c in sorted(self.run_cost.items())],
            "drafted": [
                [cls, st.seconds, st.tokens, st.samples]
                for cls, st in sorted(self.drafted.items())
                if st.samples and st.seconds > 0
            ],
        }

    def restore(self, snapshot: dict) -> int:
        """Start from an earlier engine's `snapshot` (its warm-ups then need not run
        again: at batch 8 on a 2-core CPU they cost this engine about 5% of a fixed
        batch's time). Kinds this model does not choose among are ignored; exploration
        keeps re-trying the others, so a changed workload is still noticed. Returns the
        rows restored; ValueError on a malformed snapshot, before anything changes."""
        rows = []
        try:
            for row in snapshot.get("stats", []):
                cls, kind, seconds, tokens, samples = row
                if not isinstance(kind, str):
                    raise ValueError(row)
                cls, seconds, tokens, samples = _kept_means(cls, seconds, tokens, samples)
                rows.append((cls, kind, seconds, tokens, samples))
            drafted = [_kept_means(*row) for row in snapshot.get("drafted", [])]
            limit = self.max_backoff * self.explore_every
            interval = {
                int(c): min(max(int(n), self.explore_every), limit)
                for c, n in snapshot.get("interval", {}).items()
            }
            budget = {int(c): float(b) for c, b in snapshot.get("budget", {}).items()}
            if not all(math.isfinite(b) for b in budget.values()):
                raise ValueError(budget)
            run_cost = {}
            for cls, kind, c in snapshot.get("run_cost", []):
                cls, c = int(cls), float(c)
                if cls < 1 or not isinstance(kind, str) or not 0 <= c < math.inf:
                    raise ValueError((cls, kind, c))
                run_cost[(cls, kind)] = c
        except (TypeError, ValueError, AttributeError, OverflowError) as err:
            raise ValueError(f"malformed cost snapshot: {err!r}") from None
        restored = 0
        for cls, kind, seconds, tokens, samples in rows:
            if kind in self.kinds:
                self.stats[(cls, kind)] = KindStats(seconds, tokens, samples)
                restored += 1
        if DEFERS in self.kinds:
            for cls, seconds, tokens, samples in drafted:
                self.drafted[cls] = KindStats(seconds, tokens, samples)
        self.interval.update(interval)
        self.budget.update(
            {c: min(max(b, self.min_budget), self.explore_budget) for c, b in budget.items()}
        )
        self.run_cost.update({k: c for k, c in run_cost.items() if k[1] in self.kinds})
        return restored

    def learning(self) -> dict[int, tuple[float, float]]:
        """Per size class: the regret its learning was charged and its decoding seconds
        (`explore_budget`), for logs and docs."""
        return {c: (self.regret.get(c, 0.0), s) for c, s in sorted(self.spent.items())}

    def rates(self) -> dict[str, dict[int, float]]:
        """Measured tokens/s per kind and size class (for logs and docs)."""
        out: dict[str, dict[int, float]] = {}
        for (cls, kind), st in sorted(self.stats.items()):
            out.setdefault(kind, {})[cls] = round(st.rate, 2)
        for cls, st in sorted(self.drafted.items()):
            if st.samples:
                out.setdefault(f"{DEFERS}_drafted", {})[cls] = round(st.rate, 2)
        return out


def _kept_means(cls, seconds, tokens, samples) -> tuple[int, float, float, int]:
    """One class's kept means from a snapshot, checked (ValueError where malformed)."""
    row = (int(cls), float(seconds), float(tokens), int(samples))
    if not (row[0] >= 1 and row[1] > 0 and row[3] >= 1):
        raise ValueError(row)
    if not (row[2] >= 0 and row[2] / row[1] < float("inf")):
        raise ValueError(row)
    return row


def drafts_needed(
    cost: CostModel,
    num_reqs: int,
    req_ids: list[str] | None = None,
    waiting: bool = True,
    horizon: int | None = None,
) -> bool:
    """Whether the drafter must propose before the next choice: not when plain
    decoding is settled (`CostModel.settled`) both with drafts and without them."""
    if "plain" not in cost.kinds:
        return True
    return any(
        cost.settled(num_reqs, kinds_for(cost.kinds, drafted), req_ids, waiting, horizon) != "plain"
        for drafted in (True, False)
    )


def batch_horizon(
    max_tokens: Sequence[int | None], produced: Sequence[int], room: Sequence[int]
) -> int:
    """The most steps a batch nothing waits behind can still take: its longest
    request's tokens left, by `max_tokens` (None: unbounded) and by the `room` left
    in the model's context (one token a step at least; a request may stop sooner)."""
    return max(
        (
            r if m is None else min(r, m - p)
            for m, p, r in zip(max_tokens, produced, room, strict=True)
        ),
        default=0,
    )


def waiting_for_slots(
    waiting: int, running: int, max_running: int, scheduled: int, budget: int
) -> int:
    """The requests left waiting that wait for a slot: all of them, unless this step
    used its whole token budget (`scheduled` of `budget`) with slots free; then the
    budget, not the batch, held them back, and as many as the free slots take are
    prefilled in the next steps and join the batch, which is then done when its
    slowest request is. (Counted as waiting, a batch prefilled over several steps
    had its first decoding steps ranked by throughput, where a run of SD may start
    that the slowest request's pace would not let start.) Requests held back by the
    KV cache or anything else count, as all do when no slot is free."""
    if waiting <= 0:
        return 0
    if scheduled < budget:
        return waiting
    return max(waiting - max(max_running - running, 0), 0)


def kinds_for(kinds: tuple[str, ...], drafted: bool, sampled: bool = True) -> tuple[str, ...]:
    """The candidates once the drafter has proposed: with no draft in the batch an
    ``sd`` step would be plain decoding, and with no request that sampled a token
    (`sampled`: prompt chunks only) the proxy has nothing to draft from, so neither
    is a candidate then (all of `kinds` if that leaves none: a drafter without a
    plain option). Nor is a TriSpec step without drafts where plain decoding is one:
    it would be the proxy generating alone (its confident top-1 emitted, the target
    catching up later), which on a 2-core CPU at batch 1 measured below plain
    decoding and traded places with it on noise, each switch paying a catch-up; the
    proxy's way to save target passes there is the draft kind (`proxy_drafting`),
    whose trusted drafts skip the target k tokens at a time."""
    dropped = {"sd"} if not drafted else set()
    if not drafted and "plain" in kinds:
        dropped.add("trispec")
    if not sampled:
        dropped.add("draft")
    return tuple(k for k in kinds if k not in dropped) or kinds


def step_kinds(lossless: bool, plain_allowed: bool, proxy_drafts: bool = False) -> tuple[str, ...]:
    """The kinds a cost-aware engine chooses among: no TriSpec step in lossless mode
    (it is the SD step plus a proxy pass), the draft kind where the proxy may draft,
    no plain step for drafters with a KV cache of their own (they would miss the
    steps without drafts)."""
    kinds = ("sd",) if lossless else ("trispec", "sd")
    if proxy_drafts:
        kinds = (*kinds, "draft")
    return (*kinds, "plain") if plain_allowed else kinds


def kind_with_prompts(kind: str, prompts: bool) -> str:
    """The kind a step runs when it also carries prompt chunks (`prompts`): no proxy
    pass. The proxy would read every chunk now, for requests whose first token is the
    target's anyway, and at batch 32 that pass cost about a third of the prefill; it
    catches those prompts up if a TriSpec step comes for them."""
    return "sd" if kind == "trispec" and prompts else kind
