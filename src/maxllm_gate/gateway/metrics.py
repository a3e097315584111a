"""What the gateway counts, for ``/metrics`` (Prometheus) and the dashboard.

Two sources, no copy of the scheduler's state: counters the gateway keeps as
it answers (requests, tokens, attempts, errors, deferrals, queue time), and,
read at each scrape, what the client reports (``status()``, ``capacity()``,
``latency()``): queue depth by priority, 429s seen, and each key's remaining
capacity. Labels hold ``key_id``\\ s, configured model names and error codes of
a fixed set only: never an API key, and never a model name a caller made up
or an error code a provider made up (those count as ``other``).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from maxllm_gate._logging import redact
from maxllm_gate.responses import ChatResponse, EmbeddingResponse

if TYPE_CHECKING:
    from maxllm_gate.client import maxllm_gate

__all__ = ["DEFERRED_AFTER", "ERROR_LABELS", "GatewayMetrics", "error_label"]

#: A request that waited at least this long for capacity counts as deferred: longer than
#: the dispatcher's own delay under load, shorter than any wait for capacity worth noting.
DEFERRED_AFTER = 0.05
_QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OTHER = "other"
#: Every value the ``error`` label (and the dashboard's error column) can take: the
#: gateway's own codes and the provider codes clients branch on. Any other code a
#: provider sends counts as ``other``, so the label's cardinality stays bounded and no
#: text a provider chose (which may quote a key) becomes a label.
ERROR_LABELS = frozenset(
    {
        # the gateway's own
        "api_error",
        "body_timeout",
        "client_closed",
        "decimal_above_max_value",
        "decimal_below_min_value",
        "empty_array",
        "integer_above_max_value",
        "integer_below_min_value",
        "invalid_api_key",
        "invalid_request_error",
        "invalid_type",
        "invalid_value",
        "missing_required_parameter",
        "model_not_found",
        "no_key_available",
        "provider_error",
        "provider_rejected",
        "queue_full",
        "rate_limited",
        "request_timeout",
        "request_too_large",
        "shutting_down",
        "unsupported_value",
        # OpenAI's, relayed from a provider's 4xx
        "content_filter",
        "content_policy_violation",
        "context_length_exceeded",
        "invalid_image_url",
        "invalid_prompt",
        "string_above_max_length",
        "unsupported_parameter",
    }
)
_NO_KEY = "none"
_RECENT_ERRORS = 20
_LATENCY_WINDOW = 1000


class GatewayMetrics:
    """The gateway's counters, and the scrape-time view of ``client``.

    Each app has its own registry, so several gateways may live in one
    process (tests do).
    """

    def __init__(self, client: maxllm_gate, models: Iterable[str]) -> None:
        self._client = client
        self.models = frozenset(models)
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "maxllm_gate_requests",
            "Requests answered (chat completions and embeddings), by model, answering key "
            "and HTTP status.",
            ["model", "key_id", "status"],
            registry=registry,
        )
        self.tokens = Counter(
            "maxllm_gate_tokens",
            "Tokens of answered requests, by key, model and kind (prompt, completion).",
            ["key_id", "model", "kind"],
            registry=registry,
        )
        self.attempts = Counter(
            "maxllm_gate_attempts",
            "Provider calls made for answered requests (retries and 429s included), "
            "by the key that answered.",
            ["key_id", "model"],
            registry=registry,
        )
        self.errors = Counter(
            "maxllm_gate_errors",
            "Requests that ended in an error, by model and error type.",
            ["model", "error"],
            registry=registry,
        )
        self.deferred = Counter(
            "maxllm_gate_deferred_requests",
            f"Requests that waited for capacity (at least {DEFERRED_AFTER}s) instead of "
            "being refused.",
            ["model"],
            registry=registry,
        )
        self.embedding_inputs = Counter(
            "maxllm_gate_embedding_inputs",
            "Inputs embedded (one vector each) by answered embedding requests, by model.",
            ["model"],
            registry=registry,
        )
        self.queue_time = Histogram(
            "maxllm_gate_queue_time_seconds",
            "Seconds each answered request waited for capacity.",
            ["model"],
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        registry.register(_ClientCollector(client))
        self.recent_errors: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=_RECENT_ERRORS
        )
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self.totals = collections.Counter[str]()

    def model_label(self, model: str) -> str:
        return model if model in self.models else _OTHER

    def answered(self, response: ChatResponse | EmbeddingResponse, model: str) -> None:
        """Count a request answered with a 200 (plain, or a stream read to its end; a
        chat completion or an embedding)."""
        model = self.model_label(model)
        key = response.key_used
        self.requests.labels(model, key, "200").inc()
        self.attempts.labels(key, model).inc(response.attempts)
        if response.usage is not None:
            self.tokens.labels(key, model, "prompt").inc(response.usage.prompt_tokens)
            self.tokens.labels(key, model, "completion").inc(response.usage.completion_tokens)
        if isinstance(response, EmbeddingResponse):
            self.embedding_inputs.labels(model).inc(len(response.vectors))
        self.queue_time.labels(model).observe(response.queue_time)
        if response.queue_time >= DEFERRED_AFTER:
            self.deferred.labels(model).inc()
            self.totals["deferred"] += 1
        self.totals["answered"] += 1
        self._latencies.append(response.latency)

    def failed(self, model: str, status: int, error: str, message: str, key_id: str | None) -> None:
        """Count a request that ended with an error answer (or a broken stream).

        ``error`` is an error code; one outside `ERROR_LABELS` counts as ``other``.
        """
        label = self.model_label(model)
        error = error_label(error)
        self.requests.labels(label, key_id or _NO_KEY, str(status)).inc()
        self.errors.labels(label, error).inc()
        self.totals["errors"] += 1
        if status == 503:
            self.totals["refused"] += 1
        self.recent_errors.appendleft(
            {
                "time": time.time(),
                "model": label,
                "status": status,
                "error": error,
                "message": redact(message)[:300],
            }
        )

    def latency_percentiles(self) -> dict[str, float]:
        """p50 and p99 of the recent answered requests' latency, in milliseconds."""
        if not self._latencies:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "samples": 0}
        ordered = sorted(self._latencies)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000.0

        return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "samples": len(ordered)}

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every metric, and its content type: OpenMetrics if ``accept`` (an HTTP
        ``Accept`` header) asks for it, else Prometheus' text format."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def dashboard(self) -> dict[str, Any]:
        """What the dashboard shows, in one poll."""
        client = self._client
        status = client.status()
        capacity = client.capacity()
        keys: dict[str, Any] = {}
        for key_id, entry in capacity["keys"].items():
            key_status = status["keys"].get(key_id, {})
            keys[key_id] = {
                "enabled": entry["enabled"],
                "in_flight": key_status.get("in_flight", 0),
                "rate_limited": key_status.get("rate_limited", 0),
                "models": {
                    model: {
                        "requests_remaining": m["requests_remaining"],
                        "requests_capacity": m["requests_capacity"],
                        "rpm_limit": m["rpm_limit"],
                        "tokens_remaining": m["tokens_remaining"],
                        "tokens_capacity": m["tokens_capacity"],
                        "tpm_limit": m["tpm_limit"],
                        "cooldown_remaining": m["cooldown_remaining"],
                    }
                    for model, m in entry["models"].items()
                },
            }
        return {
            "time": time.time(),
            "running": status["running"],
            "strategy": status["strategy"],
            "queued_by_priority": status["queued_by_priority"],
            "in_flight": status["in_flight"],
            "latency": self.latency_percentiles(),
            "key_latency": client.latency(),
            "answered": self.totals["answered"],
            "deferred": self.totals["deferred"],
            "errors": self.totals["errors"],
            "refused": self.totals["refused"],
            "rate_limited_seen": sum(k.get("rate_limited", 0) for k in status["keys"].values()),
            "keys": keys,
            "recent_errors": list(self.recent_errors),
        }


def error_label(code: str) -> str:
    """``code`` as a value of the ``error`` label: itself if known, else ``other``."""
    return code if code in ERROR_LABELS else _OTHER


# (metric, field of the client's report, help): per key from status(), per key and
# model from capacity().
_PER_KEY_COUNTERS = (
    ("maxllm_gate_key_calls", "calls", "Provider calls made with the key."),
    ("maxllm_gate_key_errors", "errors", "Provider errors seen on the key, 429s included."),
    ("maxllm_gate_rate_limited", "rate_limited", "429s seen on the key (never passed on)."),
)
_PER_KEY_GAUGES = (
    ("maxllm_gate_key_in_flight", "in_flight", "Calls in flight on the key."),
    ("maxllm_gate_key_enabled", "enabled", "1 while the key is usable, 0 once disabled."),
)
_PER_MODEL_GAUGES = (
    ("maxllm_gate_remaining_requests", "requests_remaining", "Requests the key could send now."),
    ("maxllm_gate_remaining_tokens", "tokens_remaining", "Tokens the key could send now."),
    ("maxllm_gate_rpm_limit", "rpm_limit", "Requests per minute the key may send."),
    ("maxllm_gate_tpm_limit", "tpm_limit", "Tokens per minute the key may send."),
    ("maxllm_gate_utilization", "utilization", "Share of the key's capacity in use, 0 to 1."),
    ("maxllm_gate_cooldown_seconds", "cooldown_remaining", "Seconds left of a 429 cooldown."),
    (
        "maxllm_gate_charge_factor",
        "charge_factor",
        "What the provider debits per unit of our charge, learned from its headers.",
    ),
    (
        "maxllm_gate_tokens_scale",
        "tokens_scale",
        "Share of the configured TPM in use, lowered by 429s without headers.",
    ),
    (
        "maxllm_gate_requests_scale",
        "requests_scale",
        "Share of the configured RPM in use, lowered by 429s without headers.",
    ),
)


class _ClientCollector:
    """Reads the client's own report at each scrape: nothing to keep in sync."""

    def __init__(self, client: maxllm_gate) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        status = self._client.status()
        capacity = self._client.capacity()
        latency = self._client.latency()
        yield _gauge(
            "maxllm_gate_queue_depth",
            "Requests waiting for capacity, by priority.",
            ["priority"],
            (([p], n) for p, n in status["queued_by_priority"].items()),
        )
        yield _gauge(
            "maxllm_gate_in_flight", "Provider calls in flight.", [], [([], status["in_flight"])]
        )
        keys = status["keys"]
        for name, field, doc in _PER_KEY_COUNTERS:
            samples = [([key_id], float(k[field])) for key_id, k in keys.items()]
            yield _counter(name, doc, ["key_id"], samples)
        for name, field, doc in _PER_KEY_GAUGES:
            samples = [([key_id], float(k[field])) for key_id, k in keys.items()]
            yield _gauge(name, doc, ["key_id"], samples)
        for name, field, doc in _PER_MODEL_GAUGES:
            samples = [
                ([key_id, model], m[field])
                for key_id, entry in capacity["keys"].items()
                for model, m in entry["models"].items()
            ]
            yield _gauge(name, doc, ["key_id", "model"], samples)
        yield _gauge(
            "maxllm_gate_key_latency_seconds",
            "Recent provider call latency of the key, by quantile.",
            ["key_id", "quantile"],
            (
                ([key_id, quantile], stats[field] / 1000.0)
                for key_id, stats in latency.items()
                for quantile, field in (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))
            ),
        )


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _gauge(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, _finite(float(value)))
    return family


def _counter(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
