"""The actor of one API key: its buckets, its calls in flight, its statistics.

Inbox: admitted jobs, handed over by the dispatcher through :meth:`KeyActor.start_call`.
Owns: the key's buckets (through the state backend), cooldowns, the calls in
flight, and latency and error statistics.
On cancellation: calls in flight are cancelled; their jobs stay in
``in_flight`` so the supervisor can re-queue them (after a crash) or fail them
(at shutdown).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from random import Random
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import attrs

from maxllm_gate._logging import get_logger, redact
from maxllm_gate.actors.job import Job, JobState
from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    TransientError,
)
from maxllm_gate.key_stats import KeyStats
from maxllm_gate.limits import (
    AdmissionMark,
    BucketSnapshot,
    ChargeCalibration,
    Cost,
    default_charge_rule,
)
from maxllm_gate.limits.charge import cache_reads_count
from maxllm_gate.providers.base import (
    Provider,
    ProviderCall,
    ProviderEmbedding,
    ProviderResponse,
)
from maxllm_gate.providers.headers import RateLimitInfo, parse_rate_limit_headers
from maxllm_gate.providers.turns import SendTurns
from maxllm_gate.responses import ChatResponse, EmbeddingResponse, Usage
from maxllm_gate.state.base import Adjust, CoolDown, Correction, Learn, Release

if TYPE_CHECKING:
    from maxllm_gate.config import KeyConfig, maxllm_gate_config
    from maxllm_gate.state import StateBackend
    from maxllm_gate.tokens import TokenEstimator

__all__ = ["KeyActor", "Requeuer"]

log = get_logger("maxllm_gate.actors.key")

_DEFAULT_RATE_LIMIT_COOLDOWN = 1.0  # a 429 with no retry-after and no reset header
# Calls to one (key, model) that leave closer together than this may reach the
# provider in either order: their reports teach the calibration nothing.
_SIMULTANEOUS = 0.01
# Idle call runners kept waiting for the next call; beyond these, a runner with
# nothing to do ends (a new one is spawned when needed). One idle for longer than
# _RETIRE_IDLE_AFTER seconds ends when another one goes idle: the pool shrinks
# back after a burst.
_MAX_IDLE_RUNNERS = 256
_RETIRE_IDLE_AFTER = 30.0


class Requeuer(Protocol):
    """What a key actor needs of the dispatcher."""

    def requeue(self, job: Job, delay: float = 0.0) -> None: ...

    def notify(self) -> None: ...

    def key_changed(self, actor: KeyActor, model: str) -> None: ...


class _IdleRunner:
    """A call runner waiting for work: set ``wake`` to give it some (or to end it)."""

    __slots__ = ("retired", "since", "wake")

    def __init__(self, since: float) -> None:
        self.wake = anyio.Event()
        self.since = since
        self.retired = False


class _TurnEnd:
    """Ends a call's send turn once: when the transport reports the send, or when
    the call ends first. Each report's time (the request left no sooner) also goes
    to ``on_sent``: the charge moves to it."""

    __slots__ = ("on_sent", "turns")

    def __init__(
        self, turns: SendTurns | None, on_sent: Callable[[float], None] | None = None
    ) -> None:
        self.turns = turns
        self.on_sent = on_sent

    def __call__(self, at: float | None = None) -> None:
        if self.turns is not None:
            turns, self.turns = self.turns, None
            turns.give_back()
        if self.on_sent is not None and at is not None:
            self.on_sent(at)


class KeyActor:
    """One API key, serving its models, one task per call in flight.

    The call tasks ("runners") are reused: a runner that finishes a call takes
    the next admitted one, or waits idle for it. Starting a task costs more
    than the rest of the scheduler's work for a request.
    """

    def __init__(
        self,
        key: KeyConfig,
        *,
        config: maxllm_gate_config,
        state: StateBackend,
        provider: Provider,
        estimator: TokenEstimator,
        dispatcher: Requeuer,
        random: Random | None = None,
    ) -> None:
        self.key = key
        self._random = random if random is not None else Random()  # retry jitter
        self.key_id = key.key_id
        self._config = config
        self._state = state
        self._provider = provider
        self._estimator = estimator
        self._dispatcher = dispatcher
        self.accounting = {m: lim.token_accounting for m, lim in key.models.items()}
        self.max_concurrency = {m: lim.max_concurrency for m, lim in key.models.items()}
        # Models whose provider limits output apart from input (Anthropic's ITPM/OTPM).
        self._output_apart = {m: lim.output_apart for m, lim in key.models.items()}
        # Per model: the cost try_admit last found no room for (see refunds_usage).
        self._turned_away: dict[str, Cost] = {}
        default_rule = default_charge_rule(key.provider)
        self._charge_rules = {
            m: (lim.charge or default_rule, lim.charge_factor) for m, lim in key.models.items()
        }
        #: What each model has learned of the provider's accounting (see limits.calibration).
        self.calibrations = {m: ChargeCalibration(lim.tpm_limit) for m, lim in key.models.items()}
        self._last_left: dict[str, Job] = {}  # per model: the call that left last
        for model, lim in key.models.items():
            state.register(self.key_id, model, lim.limit_spec(config.burst_seconds))
        self.stats = KeyStats()
        self.in_flight: set[Job] = set()
        self._in_flight_by_model: Counter[str] = Counter()
        self.disabled: str | None = None
        self.running = False
        self._calls: anyio.abc.TaskGroup | None = None
        self._ready: deque[Job] = deque()  # admitted, not yet taken by a runner
        self._idle: deque[_IdleRunner] = deque()  # oldest first
        self._stop = anyio.Event()
        #: Set once :meth:`run` has returned after :meth:`stop` (its calls settled).
        self.stopped = anyio.Event()

    # -- what the dispatcher sees ------------------------------------------------

    @property
    def models(self) -> Mapping[str, Any]:
        return self.key.models

    @property
    def available(self) -> bool:
        """Running, not disabled and not going down: may be offered new jobs.

        A call that raised cancels the actor's call group at once, but the actor
        stops running only once the group has closed; a call started meanwhile
        could not start at all (and would crash the dispatcher that started it).
        """
        calls = self._calls
        return (
            self.running
            and self.disabled is None
            and calls is not None
            and not calls.cancel_scope.cancel_called
        )

    def utilization(self, model: str, now: float) -> float:
        return self._state.utilization(self.key_id, model, now)

    def full_at(self, model: str) -> float:
        """When ``model``'s buckets will be full again, if nothing more is taken."""
        return self._state.full_at(self.key_id, model)

    def snapshot(self, model: str) -> BucketSnapshot:
        return self._state.snapshot(self.key_id, model)

    def charge(self, job: Job) -> Cost:
        """What this key's provider charges ``job`` at admission, by its rule
        (:mod:`maxllm_gate.limits.charge`), before what the key has learned."""
        prompt = self._prompt_charge(job)
        output = job.max_tokens * job.n
        if self._output_apart[job.model]:
            # Input and output apart; the provider counts its own tokens of the input,
            # fewer with a prompt cache, so all of ours may come back (see _reconcile).
            return Cost(tokens=prompt, over_tokens=prompt, output_tokens=output)
        tokens = prompt + output
        if self.accounting[job.model] != "usage":
            return Cost(tokens=tokens)
        return Cost(tokens=tokens, over_tokens=max(0, prompt - self._prompt_tokens(job)))

    def can_ever_admit(self, job: Job) -> bool:
        """Whether ``job``'s charge is within a minute of each of this key's token limits."""
        prompt, output = self._prompt_charge(job), job.max_tokens * job.n  # no Cost: hot path
        limits = self.key.models[job.model]
        if self._output_apart[job.model]:
            return prompt <= limits.tpm_limit and output <= (limits.otpm_limit or math.inf)
        return prompt + output <= limits.tpm_limit

    def _prompt_charge(self, job: Job) -> int:
        rule, factor = self._charge_rules[job.model]
        if rule == "chars":  # the usual rule: no tokenizer, no closure
            prompt = job.prompt.by_characters()
        else:
            buffered = lambda: self._estimator.with_buffer(self._prompt_tokens(job))  # noqa: E731
            prompt = job.prompt.charge(rule, buffered)
        return prompt if factor == 1.0 else math.ceil(prompt * factor)

    def _prompt_tokens(self, job: Job) -> int:
        """The tokenizer's count of the prompt, counted once per job."""
        size = job.prompt
        if size.tokens is None:
            if job.embed_input is not None:
                size.tokens = self._count_input(job.model, job.embed_input)
            else:
                size.tokens = self._estimator.count_prompt(
                    job.model, job.messages, job.params.get("tools")
                )
        return size.tokens

    def _count_input(self, model: str, embed_input: Any) -> int:
        """The tokenizer's count of an embedding input (a token array counts its length)."""
        items = [embed_input] if isinstance(embed_input, str) else embed_input
        return sum(
            self._estimator.count_text(model, item) if isinstance(item, str) else len(item)
            for item in items
        )

    def refunds_usage(self, model: str) -> bool:
        """Whether a finished call may give tokens back (usage accounting, or the
        unused output of a provider that limits it apart) that end the wait
        :meth:`try_admit` last reported for ``model`` sooner.

        Not when a cooldown or a daily request cap holds the request for at least
        as long as any token limit could: a refund gives back tokens, never a
        request, so that wait is known (and a request whose deadline falls
        within it fails at once). Nor when no call of ``model`` is in flight
        here and no other process shares the buckets: refunds come only from
        calls ending. Nor for a disabled key, which takes nothing.
        """
        if self.disabled is not None:
            return False
        if self.accounting[model] != "usage" and not self._output_apart[model]:
            return False
        if not self._in_flight_by_model[model] and not self._state.is_distributed:
            return False
        refused = self._turned_away.get(model)
        return refused is None or not self._held_by_a_count(model, refused)

    def _held_by_a_count(self, model: str, cost: Cost) -> bool:
        """Whether ``cost`` waits at least as long for a cooldown or a request-only
        cell as for any cell a refund could shorten (judged from below, and the
        refundable cells from above)."""
        snapshot = self._state.snapshot(self.key_id, model)
        held = snapshot.cooldown_remaining
        # The RPM and TPM cells' debt is no more than this (the snapshot does not
        # tell them apart), and a cell never waits longer than its debt.
        may_shorten = max(0.0, self.full_at(model) - anyio.current_time())
        for cell in snapshot.extra:
            if cell.spec.tokens or cell.spec.output_tokens:
                may_shorten = max(may_shorten, cell.full_in)
                continue
            amount = min(cell.spec.amount(cost), cell.capacity)  # more waits until full
            if amount > cell.available:
                # (amount - available) refill intervals; an interval is exactly
                # full_in / (capacity - available) while some is available, and at
                # most full_in / capacity in a deeper debt.
                unused = cell.capacity - cell.available if cell.available > 0 else cell.capacity
                held = max(held, cell.full_in * (amount - cell.available) / unused)
        return held > 0.0 and held >= may_shorten

    def tpm_limit(self, model: str) -> int:
        return self.key.models[model].tpm_limit

    async def try_admit(self, job: Job, now: float) -> float:
        """Reserve the job's charge on this key for ``job.model``, corrected by
        what the key has learned; on success ``job.reserved`` is what was taken.

        Returns 0.0 when reserved, else the seconds until it could fit
        (``inf`` while the concurrency cap is full: a finishing call wakes the
        dispatcher; and for a job this key's limit can never admit).
        """
        cap = self.max_concurrency[job.model]
        if cap is not None and self._in_flight_by_model[job.model] >= cap:
            return math.inf
        charge = self.charge(job)
        limits = self.key.models[job.model]
        if charge.tokens > limits.tpm_limit or charge.output_tokens > (
            limits.otpm_limit or math.inf
        ):
            return math.inf  # this key's provider would refuse it: "Request too large"
        calibration = self.calibrations[job.model]
        cost = calibration.reservation(charge, now)
        wait = await self._state.reserve(self.key_id, job.model, cost)
        if wait > 0.0:
            self._turned_away[job.model] = cost
        else:
            job.reserved = cost
            job.multiplier = cost.tokens / charge.tokens if charge.tokens else 1.0
            job.charged = charge.tokens * calibration.applied_factor + charge.output_tokens
        return wait

    async def cancel_reservation(self, job: Job) -> None:
        """Give back a reservation the provider has not charged (the call never
        reached it, or it refused the call)."""
        await self._state.settle(self.key_id, job.model, self._refund(job))

    @staticmethod
    def _refund(job: Job) -> list[Correction]:
        reserved = job.reserved
        rest = reserved.tokens - reserved.over_tokens
        return [
            Release(reserved.over_tokens),
            Adjust(-reserved.requests, -rest, -reserved.output_tokens),
        ]

    def start_call(self, job: Job, now: float) -> None:
        """Run an admitted job (admitted at ``now``). Must follow a successful
        :meth:`try_admit`."""
        assert self._calls is not None, "start_call on a stopped actor"
        job.mark_running(self.key_id, now)
        job.mark = self._state.mark(self.key_id, job.model)
        self.in_flight.add(job)
        self._in_flight_by_model[job.model] += 1
        self._ready.append(job)
        if self._idle:
            self._idle.pop().wake.set()  # the most recently idle: the old ones can retire
        else:
            self._calls.start_soon(self._runner)

    def disable(self, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            self._wake_idle_runners()  # it takes no new calls: its idle runners end
            log.warning("key disabled", key_id=self.key_id, reason=reason)
            self._dispatcher.notify()

    # -- lifecycle, driven by the supervisor --------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve calls until :meth:`stop`; returns once the calls in flight finish."""
        self._ready.clear()  # after a crash: take_in_flight() handed these over
        self._idle.clear()
        try:
            async with anyio.create_task_group() as calls:
                self._calls = calls
                self.running = True
                self._dispatcher.notify()
                task_status.started()
                await self._stop.wait()
                self.running = False
                self._wake_idle_runners()  # so that they end, and the group can close
            self.stopped.set()
        finally:
            self.running = False
            self._calls = None

    def stop(self) -> None:
        """Take no new calls; :meth:`run` returns when those in flight are done."""
        self.running = False
        self._stop.set()

    def take_in_flight(self) -> list[Job]:
        """Hand over the jobs whose calls were cut off (after a crash or at shutdown)."""
        jobs = [job for job in self.in_flight if not job.finished]
        self.in_flight.clear()
        self._ready.clear()
        self._in_flight_by_model.clear()
        return jobs

    # -- one call -------------------------------------------------------------------

    async def _runner(self) -> None:
        """Run admitted calls one after another; wait idle, or end, when there are none."""
        now: float | None = None
        while True:
            while self._ready:
                job = self._ready.popleft()
                try:
                    now = await self._run_call(job)
                except Exception as exc:  # cancellation passes: only the whole actor is cancelled
                    now = self._call_crashed(job, exc)
            if not self.running or len(self._idle) >= _MAX_IDLE_RUNNERS:
                return
            if now is None:
                now = anyio.current_time()
            while self._idle and self._idle[0].since < now - _RETIRE_IDLE_AFTER:
                self._retire(self._idle.popleft())
            idle = _IdleRunner(now)
            self._idle.append(idle)
            await idle.wake.wait()
            if idle.retired:
                return
            now = None

    def _call_crashed(self, job: Job, exc: Exception) -> float:
        """A bug in the bookkeeping of ``job``'s call: settle that call alone.

        The key's other calls carry on (raising out of the runner would cancel
        them all, and the supervisor would send them again). A call that reached
        the provider is never resent: it may have been charged, and answered.
        Returns the time, for the runner.
        """
        log.error(
            "a call's bookkeeping failed; the key's other calls carry on",
            request_id=job.request_id,
            key_id=self.key_id,
            sent=job.sent,
            exc=exc,
        )
        if job.state is JobState.RUNNING:
            if not job.sent:  # the provider never saw it: its place in line is kept
                self._dispatcher.requeue(job)
            else:
                job.fail(
                    TransientError(
                        f"request {job.request_id} reached the provider, but handling its "
                        f"outcome failed ({type(exc).__name__}); not resent, since the "
                        "provider may have charged it",
                        key_id=self.key_id,
                    )
                )
        self._release(job)
        return anyio.current_time()

    def _retire(self, idle: _IdleRunner) -> None:
        idle.retired = True
        idle.wake.set()

    def _wake_idle_runners(self) -> None:
        for idle in self._idle:
            self._retire(idle)
        self._idle.clear()

    @property
    def idle_runners(self) -> int:
        """Call tasks waiting for the next call (kept for reuse, see the class docs)."""
        return len(self._idle)

    async def _run_call(self, job: Job) -> float:
        """Make one call and settle its outcome; returns when the call ended."""
        call = ProviderCall(
            key=self.key,
            model=job.model,
            messages=job.messages,
            params=job.params,
            request_id=job.request_id,
            defaults=job.defaults,
            input=job.embed_input,
        )
        job.attempts += 1
        turns: SendTurns | None = getattr(self._provider, "send_turns", None)
        started = anyio.current_time()
        self.stats.record_start(started)
        response: ProviderResponse | ProviderEmbedding | None = None
        error: ProviderError | None = None
        # One scope serves both the call timeout and the caller's abandon().
        with anyio.CancelScope() as scope:
            job.call_scope = scope
            if turns is not None:  # the transport's CPU work before it sends: in turn
                await turns.take(self.key_id, job.seq)
                started = anyio.current_time()
            end_turn = _TurnEnd(turns, self._when_sent(job) if turns is not None else None)
            try:
                # Not the admission's time: calls admitted together leave one by one.
                job.left_at = started
                scope.deadline = started + self._config.call_timeout
                self._note_crowd(job)
                if job.state is JobState.RUNNING:  # else abandoned before the call began
                    response, error = await self._send(job, call, end_turn)
            finally:
                end_turn()  # the call is over: what it did not report, it never sent
        ended = anyio.current_time()
        llm_latency = ended - started
        if scope.cancelled_caught and job.state is JobState.RUNNING:
            error = TransientError(
                f"no answer within call_timeout={self._config.call_timeout}s",
                key_id=self.key_id,
            )
        if job.state is JobState.ABANDONED:
            await self._settle_abandoned(job)
        elif error is not None:
            await self._on_error(job, error)
        else:
            assert response is not None
            await self._on_success(job, response, llm_latency, ended)
        self._release(job)
        return ended

    async def _send(
        self, job: Job, call: ProviderCall, end_turn: _TurnEnd
    ) -> tuple[ProviderResponse | ProviderEmbedding | None, ProviderError | None]:
        """Make the call: its response, or the error it ended in."""
        if job.mark is not None:
            await self._state.started(self.key_id, job.model, job.mark, job.dispatched_at)
        job.sent = True
        if end_turn.turns is not None:
            call = attrs.evolve(call, on_sent=end_turn)
        try:
            if job.embed_input is not None:
                return await self._provider.embed(call), None
            if job.stream_send is None:
                return await self._provider.complete(call), None
            return await self._stream(job, call), None
        except ProviderError as exc:
            return None, exc
        except Exception as exc:  # a provider bug must not take the actor down
            message = redact(f"{type(exc).__name__}: {exc}", self.key.api_key)
            return None, TransientError(message, key_id=self.key_id)

    def _when_sent(self, job: Job) -> Callable[[float], None] | None:
        """What to do when ``job``'s request leaves at a time the transport reports
        (called on this loop, outside any task): move its charge there."""
        mark, calls = job.mark, self._calls
        if mark is None or calls is None:
            return None

        def sent(at: float) -> None:
            calls.start_soon(self._move_charge, job.model, mark, job.dispatched_at, at)

        return sent

    async def _move_charge(
        self, model: str, mark: AdmissionMark, admitted_at: float, at: float
    ) -> None:
        try:
            await self._state.started(self.key_id, model, mark, admitted_at, at)
        except Exception as exc:  # the state's failure must not take the actor down
            log.warning(
                "could not move a charge to its send time",
                key_id=self.key_id,
                model=model,
                error=exc,  # the logger shows it as "Type: message", secrets masked
            )

    def _note_crowd(self, job: Job) -> None:
        """Pair ``job`` with the call before it, if they left about together and
        that one is still in flight (its report may yet be out of order)."""
        previous = self._last_left.get(job.model)
        if (
            previous is not None
            and previous is not job
            and previous in self.in_flight
            and job.left_at - previous.left_at < _SIMULTANEOUS
        ):
            if previous.crowd is None:
                previous.crowd = set()
            previous.crowd.add(job)
            job.crowd = {previous}
            previous.crowded += 1
            job.crowded += 1
        self._last_left[job.model] = job

    @staticmethod
    def _leave_crowd(job: Job, *, refused: bool) -> None:
        """Unlink ``job`` from the calls it left with; a refused one (it reached no
        accounting) no longer crowds them."""
        for other in job.crowd or ():
            if other.crowd is not None:
                other.crowd.discard(job)
            if refused:
                other.crowded -= 1
        job.crowd = None
        job.crowded = 0

    async def _stream(self, job: Job, call: ProviderCall) -> ProviderResponse:
        """Relay a stream to the caller's channel; returns the assembled response."""
        assert job.stream_send is not None
        upstream = await self._provider.open_stream(call)
        finish: str | None = None
        usage: Usage | None = None
        try:
            async for chunk in upstream:
                if chunk.text:
                    job.streamed = True
                    job.relayed.append(chunk.text)
                try:  # every chunk: a relay wants the role, finish_reason and usage too
                    await job.stream_send.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break  # the consumer went away; abandon() cancels us shortly
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
        content = "".join(job.relayed)
        if usage is None:  # no usage chunk: count what we relayed
            prompt = self._estimator.count_prompt(job.model, job.messages)
            usage = Usage(prompt, self._estimator.count_text(job.model, content))
        return ProviderResponse(
            content=content,
            finish_reason=finish,
            usage=usage,
            model=job.model,
            headers=upstream.headers,
        )

    # -- outcomes ---------------------------------------------------------------------

    async def _on_success(
        self,
        job: Job,
        response: ProviderResponse | ProviderEmbedding,
        llm_latency: float,
        now: float,
    ) -> None:
        usage = response.usage
        if response.sent_at is not None:  # the transport knows when it really left
            job.left_at = min(now, max(job.left_at, response.sent_at))
        result = self._result(job, response, llm_latency, now)
        # The answer goes out first: the caller need not wait for the bookkeeping
        # below (round trips, with Redis), and gets it even if that bookkeeping fails
        # (and this actor is about to crash): never a resend.
        job.finish(result)
        self.stats.record_success(llm_latency, usage.total_tokens if usage else 0)
        # The headers describe the provider's bucket at admission, before any
        # refund that reconciliation mirrors: fold them in first.
        charged = self._charged_tokens(job)
        corrections = self._report(job, response.headers, charged, 1.0, now)
        if usage is not None and (
            self.accounting[job.model] == "usage" or self._output_apart[job.model]
        ):
            corrections += self._reconcile(job, usage)
        await self._state.settle(self.key_id, job.model, corrections)
        log.debug(
            "request done",
            request_id=job.request_id,
            key_id=self.key_id,
            attempts=job.attempts,
            llm_latency=llm_latency,
        )

    def _result(
        self,
        job: Job,
        response: ProviderResponse | ProviderEmbedding,
        llm_latency: float,
        now: float,
    ) -> ChatResponse | EmbeddingResponse:
        common: dict[str, Any] = {
            "model": response.model or job.model,
            "usage": response.usage,
            "latency": now - job.submitted_at,
            "llm_latency": llm_latency,
            "queue_time": job.queue_time,
            "attempts": job.attempts,
            "key_used": self.key_id,
            "request_id": job.request_id,
            "charged_tokens": math.ceil(job.charged),
            "raw": response.raw,
        }
        if isinstance(response, ProviderEmbedding):
            return EmbeddingResponse(vectors=response.vectors, **common)
        return ChatResponse(
            content=response.content,
            finish_reason=response.finish_reason,
            tool_calls=response.tool_calls,
            **common,
        )

    def _charged_tokens(self, job: Job) -> float:
        """What the provider's token bucket took for ``job`` at admission, as far as
        we know: not the over-estimate, but all of the input where that is only
        known to be over once the call tells its cache reads."""
        if self._output_apart[job.model]:
            return job.reserved.tokens
        return job.reserved.tokens - job.reserved.over_tokens

    def _reconcile(self, job: Job, usage: Usage) -> list[Correction]:
        """Correct a "usage" reservation to what the provider charged in the end:
        the real prompt and completion.

        An "admission" provider keeps what it charged at admission, whatever the
        call used: there is nothing to correct, and what our charge model gets
        wrong is learned from the headers instead. A provider that limits output
        apart (Anthropic) counts the input it was sent, less cache reads on most
        models (:func:`~maxllm_gate.limits.charge.cache_reads_count`), and gives
        back the output reserved (``max_tokens``) and not generated.
        """
        # In reserved units: the key's lessons scale what the provider debits.
        m, completion = job.multiplier, job.max_tokens * job.n
        if self._output_apart[job.model]:
            cached = 0 if cache_reads_count(job.model) else usage.cached_prompt_tokens
            over_input = job.reserved.tokens - m * (usage.prompt_tokens - cached)
            unused = job.reserved.output_tokens - usage.completion_tokens
            return [
                Release(over_input) if over_input > 0 else Adjust(0.0, -over_input),
                Adjust(0.0, 0.0, -unused),
            ]
        over = job.reserved.tokens - m * (completion + usage.prompt_tokens)
        # over < 0: we under-estimated, and the provider has charged more already
        corrections: list[Correction] = [Release(over) if over > 0 else Adjust(0.0, -over)]
        unused = m * (completion - usage.completion_tokens)
        return [*corrections, Adjust(0.0, -unused)]

    def _report(
        self,
        job: Job,
        headers: Mapping[str, str],
        charged_tokens: float,
        charged_requests: float,
        now: float,
    ) -> list[Correction]:
        """What the provider's rate-limit headers, received at ``now``, teach this
        key's buckets (nothing if there were none); the calibration learns at once."""
        info = parse_rate_limit_headers(headers, provider=self.key.provider) if headers else None
        if info is None:
            return []
        if self._output_apart[job.model]:
            info = info.input_apart()  # our token bucket is the input's
        calibration = self.calibrations[job.model]
        calibration.proven = True
        if (
            charged_tokens > 0  # the provider admitted the call: its report includes it
            and not job.crowded
            and info.reset_tokens is not None
            and job.mark is not None
            and self.accounting[job.model] == "admission"
            and not self._output_apart[job.model]  # counts its own tokens; reconciled
        ):
            calibration.observe(
                sent_at=job.left_at,
                mark=job.mark.tokens,
                full_in=info.reset_tokens,
                limit_per_minute=info.limit_tokens or self.tpm_limit(job.model),
                multiplier=job.multiplier,
            )
        output = job.reserved.output_tokens if charged_requests else 0.0
        return [Learn(info, now - job.left_at, charged_tokens, charged_requests, output)]

    async def _settle_abandoned(self, job: Job) -> None:
        """The caller gave up: give back what the provider cannot have charged."""
        if not job.sent:
            self._refused(job)
            await self.cancel_reservation(job)
        elif self._output_apart[job.model] or self.accounting[job.model] == "usage":
            # The provider charges what it generated; streamed text shows how much.
            generated = self._estimator.count_text(job.model, "".join(job.relayed))
            if self._output_apart[job.model]:
                unused_output = max(0.0, job.reserved.output_tokens - generated)
                await self._state.settle(self.key_id, job.model, [Adjust(0.0, 0.0, -unused_output)])
            else:
                unused = job.multiplier * max(0, job.max_tokens * job.n - generated)
                await self._state.adjust(self.key_id, job.model, 0.0, -unused)
        log.debug("request abandoned", request_id=job.request_id, key_id=self.key_id)

    async def _on_error(self, job: Job, error: ProviderError) -> None:
        error.scrub(self.key.api_key)  # providers may echo the key back, in any field
        error.key_id = self.key_id
        corrections: list[Correction] = []
        if isinstance(error, RateLimitError | BadRequestError):
            # Refused: the provider charged nothing, so neither do we (a request too
            # large for the key would otherwise leave its debt behind). Refunded
            # first: the provider's report below does not include the call.
            self._refused(job)
            self._leave_crowd(job, refused=True)
            corrections += self._refund(job)
        synced = False
        if error.headers:
            refused = RateLimitError | QuotaExceededError | AuthenticationError | BadRequestError
            admitted = not isinstance(error, refused)
            charged = self._charged_tokens(job) if admitted else 0.0
            report = self._report(
                job, error.headers, charged, 1.0 if admitted else 0.0, anyio.current_time()
            )
            synced = bool(report)
            corrections += report
        log_fields = {
            "request_id": job.request_id,
            "key_id": self.key_id,
            "status": error.status_code,
            "error": type(error).__name__,
        }
        if isinstance(error, RateLimitError):
            return await self._on_rate_limited(job, error, synced, corrections, log_fields)
        await self._state.settle(self.key_id, job.model, corrections)
        self.stats.record_error()
        if isinstance(error, AuthenticationError | QuotaExceededError):
            self.disable(f"{type(error).__name__} (status {error.status_code})")
            return self._requeue(job, error)
        if isinstance(error, BadRequestError):
            log.info("request rejected by provider", **log_fields)
            return job.fail(error)
        # Transient, or an unclassified provider error: back off and retry.
        job.retries += 1
        if job.retries > self._config.max_retries:
            # INFO, as a rejected request: the caller gets the error (a batch run records
            # each one); a warning per failed request flooded long runs' stderr.
            log.info("request failed after retries", retries=job.retries - 1, **log_fields)
            return job.fail(error)
        delay = self._random.uniform(
            0.0,
            min(
                self._config.retry_max_delay, self._config.retry_base_delay * 2 ** (job.retries - 1)
            ),
        )
        log.info("retrying after transient error", delay=delay, **log_fields)
        self._requeue(job, error, delay)

    async def _on_rate_limited(
        self,
        job: Job,
        error: RateLimitError,
        synced: bool,
        corrections: list[Correction],
        log_fields: dict[str, Any],
    ) -> None:
        """Cool the key down for as long as the provider said (within ``max_cooldown``),
        learn a lower rate if its headers never proved one, and queue the job
        again, unless it has drawn more than ``max_rate_limit_retries`` 429s over
        ``max_cooldown`` seconds or more."""
        self.stats.record_error(rate_limited=True)
        now = anyio.current_time()
        cut = self.calibrations[job.model].rate_limited(
            now, admitted_at=job.dispatched_at, dimension=error.dimension
        )
        if not synced:
            # No headers to sync from, but the refusal itself says the provider's
            # bucket is (nearly) empty now: so is ours, in the dimension it named.
            dimension = error.dimension
            empty = RateLimitInfo(
                remaining_requests=0.0 if dimension in (None, "requests") else None,
                remaining_tokens=0.0 if dimension in (None, "tokens") else None,
            )
            corrections.append(Learn(empty, 0.0, 0.0, 0.0))
        if cut:
            log.info("lowering the rate of a key without rate-limit headers", **log_fields)
        cooldown = min(error.retry_after or _DEFAULT_RATE_LIMIT_COOLDOWN, self._config.max_cooldown)
        corrections.append(CoolDown(cooldown))
        await self._state.settle(self.key_id, job.model, corrections)
        job.rate_limits += 1
        if job.rate_limits == 1:
            job.first_rate_limited_at = now
        # Refused again and again, for long: a daily cap, or a request too large for
        # the provider's real limit. A burst of 429s in contention (processes that
        # lost Redis for a moment) passes in seconds, and is not given up on.
        if (
            job.rate_limits > self._config.max_rate_limit_retries
            and now - job.first_rate_limited_at >= self._config.max_cooldown
        ):
            log.info("request refused after repeated 429s", **log_fields)
            return job.fail(
                RateLimitError(
                    f"the provider refused this request with a 429 {job.rate_limits} times "
                    f"in {now - job.first_rate_limited_at:.0f}s (max_rate_limit_retries="
                    f"{self._config.max_rate_limit_retries}, max_cooldown="
                    f"{self._config.max_cooldown:g}s); "
                    f"the last answer: {error.args[0] if error.args else error}",
                    status_code=429,
                    key_id=self.key_id,
                    code=error.code,
                    param=error.param,
                )
            )
        log.info("rate limited, cooling down", cooldown=cooldown, **log_fields)
        self._requeue(job, error)

    def _requeue(self, job: Job, error: ProviderError, delay: float = 0.0) -> None:
        if job.streamed:  # text already reached the caller; a retry would repeat it
            job.fail(error)
        elif job.state is JobState.RUNNING:
            self._dispatcher.requeue(job, delay)

    def _refused(self, job: Job) -> None:
        """The provider debited nothing for ``job``'s call: keep it out of what the
        calibration counts as reserved."""
        if job.mark is not None:
            self.calibrations[job.model].refused(mark=job.mark.tokens, tokens=job.reserved.tokens)

    def _release(self, job: Job) -> None:
        if job.crowd is not None:
            self._leave_crowd(job, refused=False)
        if job in self.in_flight:
            self.in_flight.discard(job)
            self._in_flight_by_model[job.model] -= 1
        self._dispatcher.key_changed(self, job.model)
        self._dispatcher.notify()
