"""Prometheus metrics for `lamina serve` (/metrics): HTTP requests and latency by route and status,
time to first token, and the engine's own counts read at scrape time (queue depth, running
requests, long prompts being prefilled in chunks, free KV slots, prompt and generated tokens,
requests abandoned by their client, the prefix cache's lookups, hits, reused tokens and bytes)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .batcher import Batcher

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EngineCollector:
    """The batcher's state and counters, read when Prometheus scrapes."""

    def __init__(self, batcher: Batcher):
        self.batcher = batcher

    def collect(self):
        b, s = self.batcher, self.batcher.stats
        gauges = {"queue_depth": ("requests waiting for a KV slot", b.n_waiting),
                  "running_requests": ("requests being decoded", b.n_running),
                  "prefilling_requests": ("long prompts being prefilled a chunk a step", int(b.chunked is not None)),
                  "kv_slots_free": ("KV-cache slots free", b.config.max_slots - b.n_running - (b.chunked is not None)),
                  "kv_slots": ("KV-cache slots", b.config.max_slots)}
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"lamina_{name}", doc, value=value)
        counters = {"prompt_tokens": ("prompt tokens prefilled", s["prompt_tokens"]),
                    "generation_tokens": ("tokens generated", s["generated_tokens"]),
                    "engine_requests": ("requests the engine accepted", s["requests"]),
                    "requests_aborted": ("requests stopped because their client went away", s["aborted"]),
                    "requests_timed_out": ("requests stopped at their deadline", s["timed_out"]),
                    "decode_steps": ("batched decode steps", s["steps"])}
        if b.prefixes is not None:
            p = b.prefixes.stats
            counters.update({"prefix_cache_lookups": ("prompts looked up in the prefix cache", p["lookups"]),
                             "prefix_cache_hits": ("prompts that began as a cached one", p["hits"]),
                             "prefix_cache_reused_tokens": ("prompt tokens copied from the prefix cache, not computed",
                                                            p["reused_tokens"])})
            yield GaugeMetricFamily("lamina_prefix_cache_bytes", "bytes of keys and values the prefix cache holds",
                                    value=b.prefixes.nbytes)
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"lamina_{name}", doc, value=value)


class Metrics:
    def __init__(self, batcher: Batcher):
        self.registry = CollectorRegistry()
        self.requests = Counter("lamina_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("lamina_request_latency_seconds", "time to the end of the response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("lamina_time_to_first_token_seconds", "time to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(batcher))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP response by route and status, with its latency (to the
    last byte, so a stream counts whole)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
