"""Synthetic LLM-gateway request logs: realistic enough to exercise the export pipeline, fast
enough to load millions of rows in seconds, and deterministic: a seed always yields the same table.

Rows are generated per slice of event time with vectorised numpy draws. Sessions started in a slice
may run past its end and some rows arrive late, so every slice's rows go through a pending buffer
that only releases rows whose ``ingested_at`` can no longer be undercut by a later slice: the output
is globally ordered by ``ingested_at`` while only a few slices are ever held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np

from prism_pipelines.source import INSERT_COLUMNS

#: the gateway table's columns without ``id`` (the database assigns the ingest sequence)
COLUMNS = INSERT_COLUMNS


class ModelSpec(NamedTuple):
    """One routable model; its speed figures drive ``latency_ms``, its traffic share the mix."""

    name: str
    provider: str
    context: int  # context window in tokens: larger prompts fail with a context-length error
    ttft_ms: float  # median time to first token
    tokens_per_s: float  # output throughput once streaming
    output_scale: float  # reasoning models bill thinking tokens as output
    share: float  # share of traffic in a typical multi-provider tenant


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("gpt-4o-mini", "openai", 128_000, 350, 85, 1.0, 0.20),
    ModelSpec("gpt-4o", "openai", 128_000, 450, 70, 1.0, 0.16),
    ModelSpec("gpt-4.1", "openai", 1_047_576, 500, 75, 1.1, 0.05),
    ModelSpec("gpt-4.1-mini", "openai", 1_047_576, 400, 90, 1.0, 0.05),
    ModelSpec("o3-mini", "openai", 200_000, 2500, 150, 2.5, 0.03),
    ModelSpec("claude-sonnet-4-20250514", "anthropic", 200_000, 1200, 55, 1.3, 0.13),
    ModelSpec("claude-3-5-haiku-20241022", "anthropic", 200_000, 650, 65, 0.9, 0.05),
    ModelSpec("claude-opus-4-20250514", "anthropic", 200_000, 1800, 35, 1.4, 0.01),
    ModelSpec("gemini-2.5-flash", "google", 1_048_576, 450, 180, 1.5, 0.08),
    ModelSpec("gemini-2.5-pro", "google", 1_048_576, 2500, 90, 2.2, 0.03),
    ModelSpec("gemini-2.0-flash", "google", 1_048_576, 350, 200, 1.0, 0.03),
    ModelSpec("mistral-large-latest", "mistral", 128_000, 500, 45, 1.0, 0.03),
    ModelSpec("mistral-small-latest", "mistral", 128_000, 300, 120, 0.9, 0.02),
    ModelSpec("llama-3.3-70b-versatile", "groq", 131_072, 200, 275, 1.0, 0.06),
    ModelSpec("llama-3.1-8b-instant", "groq", 131_072, 120, 750, 0.8, 0.03),
    ModelSpec("anthropic.claude-3-5-sonnet-20241022-v2:0", "bedrock", 200_000, 1000, 50, 1.1, 0.03),
    ModelSpec("meta.llama3-1-70b-instruct-v1:0", "bedrock", 128_000, 600, 45, 1.0, 0.01),
)
# USD per million (input, output) tokens: 2025 list prices, the source of every ``cost``.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3-mini": (1.10, 4.40),
    "claude-sonnet-4-20250514": (3.00, 15.00),
    "claude-3-5-haiku-20241022": (0.80, 4.00),
    "claude-opus-4-20250514": (15.00, 75.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "mistral-large-latest": (2.00, 6.00),
    "mistral-small-latest": (0.10, 0.30),
    "llama-3.3-70b-versatile": (0.59, 0.79),
    "llama-3.1-8b-instant": (0.05, 0.08),
    "anthropic.claude-3-5-sonnet-20241022-v2:0": (3.00, 15.00),
    "meta.llama3-1-70b-instruct-v1:0": (0.72, 0.72),
}
# The model the gateway's fallback chain moves to when a model fails: often another provider.
FALLBACK_MODELS: dict[str, str] = {
    "gpt-4o-mini": "claude-3-5-haiku-20241022",
    "gpt-4o": "claude-sonnet-4-20250514",
    "gpt-4.1": "gpt-4o",
    "gpt-4.1-mini": "gpt-4o-mini",
    "o3-mini": "gpt-4o",
    "claude-sonnet-4-20250514": "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "claude-3-5-haiku-20241022": "gpt-4o-mini",
    "claude-opus-4-20250514": "claude-sonnet-4-20250514",
    "gemini-2.5-flash": "gpt-4o-mini",
    "gemini-2.5-pro": "claude-sonnet-4-20250514",
    "gemini-2.0-flash": "gemini-2.5-flash",
    "mistral-large-latest": "gpt-4o",
    "mistral-small-latest": "gpt-4o-mini",
    "llama-3.3-70b-versatile": "meta.llama3-1-70b-instruct-v1:0",
    "llama-3.1-8b-instant": "gpt-4o-mini",
    "anthropic.claude-3-5-sonnet-20241022-v2:0": "claude-sonnet-4-20250514",
    "meta.llama3-1-70b-instruct-v1:0": "llama-3.3-70b-versatile",
}
PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "google", "mistral", "groq", "bedrock")
EVENT_TYPE = "request"

# Relative request volume at each UTC hour (value at the top of the hour, interpolated between):
# the night trough is Asia-Pacific only, the afternoon peak is Europe's afternoon and US morning.
# fmt: off
HOURLY_TRAFFIC: tuple[float, ...] = (
    0.35, 0.28, 0.22, 0.18, 0.17, 0.20, 0.30, 0.45, 0.60, 0.70, 0.75, 0.78,
    0.82, 0.90, 0.97, 1.00, 1.00, 0.95, 0.88, 0.80, 0.70, 0.60, 0.50, 0.42,
)
# fmt: on
WEEKEND_FACTOR = 0.55  # B2B traffic roughly halves on Saturdays and Sundays

# Sessions: one user's conversation or agent run, 1-20 requests minutes apart; traces group the
# 1-5 calls of one step (tool calls, retries) that run back to back.
SESSION_CONTINUE_P = 0.25  # geometric session length: mean ~4 requests
MAX_SESSION_REQUESTS = 20
TRACE_SIZE_P: tuple[float, ...] = (0.45, 0.25, 0.15, 0.10, 0.05)  # P(trace has 1..5 requests)
THINK_TIME_S = 40.0  # mean pause before a new trace: the user reads the answer and types
TRACE_STEP_GAP_S = 0.4  # mean pause between calls of one trace: the client issues the next call
SESSION_MODEL_STICKINESS = 0.8  # apps mostly stay on one model; the rest are side calls
ANONYMOUS_SESSION_RATE = 0.10  # sessions without a user_id
USER_POOL = 20_000
USER_SKEW = 3.0  # u**3 sampling: a few heavy users dominate, as in real tenants
STREAM_RATE = 0.35
LEGACY_GATEWAY_RATE = 0.05  # old gateway versions log neither model_requested nor cache_status
ROUTING_STRATEGIES: tuple[str, ...] = ("", "cost-optimized", "latency", "round-robin", "fallback")
# Drawn per session over all but "fallback", which marks individual requests.
ROUTING_SHARE: tuple[float, ...] = (0.80, 0.09, 0.07, 0.04)
FALLBACK_RATE = 0.02
FALLBACK_PENALTY_MS = (300.0, 5000.0)  # time lost on the failed primary attempt

# Tokens: prompts grow as the conversation history is resent with every turn.
INPUT_MEDIAN_TOKENS = 900.0
INPUT_SIGMA = 1.1
HISTORY_GROWTH = 0.5  # each earlier request in the session adds half a prompt
OUTPUT_MEDIAN_TOKENS = 220.0
OUTPUT_SIGMA = 0.9
MAX_OUTPUT_TOKENS = 16_384
PREFILL_MS_PER_TOKEN = 0.02
TTFT_SIGMA = 0.35
DECODE_SIGMA = 0.2

# Cache: hits are answered by the gateway in milliseconds and cost nothing.
CACHE_STATUSES: tuple[str | None, ...] = (None, "hit", "miss", "skip")
CACHE_NONE, CACHE_HIT, CACHE_MISS, CACHE_SKIP = range(4)
CACHE_ENABLED_RATE = 0.80  # per session; the rest log cache_status None
CACHE_SKIP_RATE = 0.12  # no-cache header or non-deterministic request
CACHE_HIT_RATE = 0.20  # of cache-enabled requests: ~15% of all rows
CACHE_HIT_LATENCY_MS = (2.0, 25.0)

# Guardrails run for sessions whose app configured a policy; ~5% of those requests trigger one.
GUARDRAILS: tuple[str, ...] = ("prompt_injection", "pii", "toxicity", "jailbreak", "secrets")
GUARDRAIL_ACTIONS: tuple[str, ...] = ("allow", "block", "flag", "redact")
GUARDRAIL_POLICIES: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.60),
    (("pii",), 0.12),
    (("prompt_injection", "jailbreak"), 0.10),
    (("prompt_injection", "pii", "toxicity"), 0.12),
    (("secrets", "pii"), 0.06),
)
GUARDRAIL_TRIGGER_RATE = 0.05
# P(block, flag, redact) once triggered: injections are blocked, personal data is redacted.
GUARDRAIL_TRIGGER_ACTIONS: dict[str, tuple[float, float, float]] = {
    "prompt_injection": (0.7, 0.3, 0.0),
    "pii": (0.1, 0.2, 0.7),
    "toxicity": (0.4, 0.6, 0.0),
    "jailbreak": (0.8, 0.2, 0.0),
    "secrets": (0.4, 0.0, 0.6),
}
GUARDRAIL_MIN_SCORE = (0.0, 0.85, 0.60, 0.70)  # lowest score that yields each action
ALLOW_SCORE_CONCENTRATION = 15.0  # passing checks score Beta(1, 15): mostly below 0.1
GUARDRAIL_OVERHEAD_MS = (15.0, 120.0)
GUARDRAIL_BLOCK_STATUSES = (403, 400)
GUARDRAIL_BLOCK_403_SHARE = 0.7
GUARDRAIL_BLOCK_LATENCY_MS = (20.0, 250.0)
GUARDRAIL_BLOCK_MESSAGE = (
    "Request blocked by guardrail '{guardrail}' (score {score:.2f}): "
    "content violates the configured policy"
)


class ErrorKind(NamedTuple):
    """A provider or gateway failure and how it looks in the log."""

    name: str
    status: int
    share: float  # share among provider and gateway failures
    latency_ms: tuple[float, float]  # log-uniform range: fast rejections, slow timeouts
    messages: dict[str, str]  # provider -> message template; "*" for the others


PROVIDER_ERROR_RATE = 0.013  # with guardrail blocks (~0.7%) about 2% of rows are errors
GATEWAY_TIMEOUT_S = 60
ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind(
        "rate_limit",
        429,
        0.35,
        (40.0, 400.0),
        {
            "openai": "Rate limit reached for {model} in organization {org} on tokens per min "
            "(TPM): Limit {limit}, Used {used}, Requested {requested}. "
            "Please try again in {wait:.3f}s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            "anthropic": "This request would exceed the rate limit for your organization ({org}) "
            "of {limit} input tokens per minute. For details, refer to: "
            "https://docs.anthropic.com/en/api/rate-limits. You can see the response headers "
            "for current usage. Please reduce the prompt length or the maximum tokens requested, "
            "or try again later.",
            "google": "Resource has been exhausted (e.g. check quota).",
            "groq": "Rate limit reached for model `{model}` in organization `{org}` service tier "
            "`on_demand` on tokens per minute (TPM): Limit {limit}, Used {used}, Requested "
            "{requested}. Please try again in {wait:.2f}s.",
            "bedrock": "ThrottlingException: Too many tokens, please wait before trying again.",
            "*": "Requests rate limit exceeded",
        },
    ),
    ErrorKind(
        "server_error",
        500,
        0.10,
        (300.0, 8000.0),
        {
            "openai": "The server had an error while processing your request. Sorry about that!",
            "google": "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
            "bedrock": "ModelErrorException: The system encountered an unexpected error during "
            "processing. Try your request again.",
            "*": "Internal server error",
        },
    ),
    ErrorKind(
        "bad_gateway",
        502,
        0.07,
        (100.0, 30_000.0),
        {
            "*": "upstream connect error or disconnect/reset before headers. "
            "reset reason: connection termination",
        },
    ),
    ErrorKind(
        "overloaded",
        503,
        0.13,
        (50.0, 1500.0),
        {
            "openai": "The engine is currently overloaded, please try again later.",
            "anthropic": "Overloaded",
            "google": "The model is overloaded. Please try again later.",
            "bedrock": "ServiceUnavailableException: Bedrock is unable to process your request.",
            "*": "Service unavailable",
        },
    ),
    ErrorKind(
        "timeout",
        504,
        0.09,
        (GATEWAY_TIMEOUT_S * 1e3, GATEWAY_TIMEOUT_S * 1e3 + 250),
        {
            "*": "Gateway timeout: {provider} did not respond within {timeout}s",
        },
    ),
    ErrorKind(
        "context_length",
        400,
        0.16,
        (30.0, 300.0),
        {
            "anthropic": "prompt is too long: {tokens} tokens > {context} maximum",
            "google": "The input token count ({tokens}) exceeds the maximum number of tokens "
            "allowed ({context}).",
            "mistral": "Prompt contains {tokens} tokens and 0 draft tokens, too large for model "
            "with {context} maximum context length",
            "bedrock": "ValidationException: Input is too long for requested model.",
            "*": "This model's maximum context length is {context} tokens. However, your messages "
            "resulted in {tokens} tokens. Please reduce the length of the messages.",
        },
    ),
    ErrorKind(
        "invalid_key",
        401,
        0.10,
        (20.0, 200.0),
        {
            "openai": "Incorrect API key provided: sk-proj-****{key}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "anthropic": "invalid x-api-key",
            "google": "API key not valid. Please pass a valid API key.",
            "groq": "Invalid API Key",
            "bedrock": "UnrecognizedClientException: The security token included in the request is "
            "invalid.",
            "*": "Unauthorized",
        },
    ),
)
ANTHROPIC_OVERLOADED_STATUS = 529  # Anthropic reports overload with its own status, not 503
ORG_IDS: dict[str, str] = {  # the demo tenant's accounts, quoted by rate-limit messages
    "openai": "org-4fQz8LmR2vTnXc7KpWs3HdJb",
    "anthropic": "5c1e9f0a-7b2d-4e83-9a61-2f4c8d0b7e35",
    "groq": "org_01jb6m2ztq8e4vx9r3kw5ynd7c",
}
API_KEY_SUFFIX = "x7Qa"
TPM_LIMITS: dict[str, int] = {"openai": 800_000, "anthropic": 400_000, "groq": 300_000}

# Ingestion: rows land within two seconds of the response; ~1% are replayed from a spool later.
INGEST_DELAY_S = (0.05, 2.0)
LATE_RATE = 0.01
LATE_DELAY_S = (120.0, 3 * 3600.0)
MAX_INGEST_LAG_US = 3 * 3600 * 1_000_000

# Ids: prefix and random-looking hex bytes (trace ids have the 32 hex digits of W3C trace context).
ID_FORMATS: dict[str, tuple[str, int]] = {
    "request": ("req_", 12),
    "trace": ("", 16),
    "session": ("sess_", 10),
    "user": ("usr_", 6),
}

# Generation granularity: bins resolve the daily curve; slices group bins to amortise the
# per-call overhead of numpy.
BIN_US = 600 * 1_000_000
TARGET_SLICE_ROWS = 8_000

_MODEL_INDEX = {m.name: i for i, m in enumerate(MODELS)}
_MODEL_SHARE = np.array([m.share for m in MODELS]) / sum(m.share for m in MODELS)
_MODEL_PROVIDER = np.array([PROVIDERS.index(m.provider) for m in MODELS])
_FALLBACK = np.array([_MODEL_INDEX[FALLBACK_MODELS[m.name]] for m in MODELS])
_PRICE_IN, _PRICE_OUT = np.array([PRICES_PER_MILLION[m.name] for m in MODELS]).T / 1e6
_CONTEXT = np.array([m.context for m in MODELS])
_TTFT_MS = np.array([m.ttft_ms for m in MODELS])
_MS_PER_TOKEN = 1000.0 / np.array([m.tokens_per_s for m in MODELS])
_OUTPUT_SCALE = np.array([m.output_scale for m in MODELS])
_MODEL_NAMES = np.array([m.name for m in MODELS], dtype=object)
_PROVIDER_NAMES = np.array([m.provider for m in MODELS], dtype=object)
_REQUESTED_NAMES = np.append(_MODEL_NAMES, None)  # index -1: not logged
_CACHE_NAMES = np.array(CACHE_STATUSES, dtype=object)
_ROUTING_NAMES = np.array(ROUTING_STRATEGIES, dtype=object)
_FALLBACK_ROUTING = ROUTING_STRATEGIES.index("fallback")
_ANTHROPIC = PROVIDERS.index("anthropic")

# Error kind codes: 0 = success, 1..len(ERROR_KINDS) = ERROR_KINDS, then the guardrail block.
_KIND_CODE = {k.name: code for code, k in enumerate(ERROR_KINDS, start=1)}
_GUARDRAIL_BLOCK = len(ERROR_KINDS) + 1
_ERROR_SHARE = np.array([k.share for k in ERROR_KINDS]) / sum(k.share for k in ERROR_KINDS)
_STATUS = np.array([200, *(k.status for k in ERROR_KINDS), GUARDRAIL_BLOCK_STATUSES[0]])
_ERROR_LOG_LATENCY = np.log(  # log-uniform bounds per error kind code; row 0 (success) is unused
    [(1.0, 1.0), *(k.latency_ms for k in ERROR_KINDS), GUARDRAIL_BLOCK_LATENCY_MS]
)

_POLICY_SHARE = np.array([share for _, share in GUARDRAIL_POLICIES])
_POLICY_SIZE = np.array([len(names) for names, _ in GUARDRAIL_POLICIES])
_POLICY_WIDTH = int(_POLICY_SIZE.max())
_POLICY_MEMBERS = np.array(
    [
        [GUARDRAILS.index(n) for n in names] + [-1] * (_POLICY_WIDTH - len(names))
        for names, _ in GUARDRAIL_POLICIES
    ]
)
_TRIGGER_ACTION_CDF = np.cumsum([GUARDRAIL_TRIGGER_ACTIONS[g] for g in GUARDRAILS], axis=1)
_MIN_SCORE = np.array(GUARDRAIL_MIN_SCORE)
# Every possible result entry, pre-serialised: scores are reported to two decimals, so JSON for a
# request is a lookup plus a join instead of a json.dumps call per row.
_ENTRY_JSON = np.array(
    [
        json.dumps({"name": g, "action": a, "score": s / 100})
        for g in GUARDRAILS
        for a in GUARDRAIL_ACTIONS
        for s in range(101)
    ]
    + [""],
    dtype=object,
)
_NEXT_ENTRY_JSON = np.array([", " + e if e else "" for e in _ENTRY_JSON], dtype=object)

_ONE_US = timedelta(microseconds=1)
# One byte as two UCS4 hex digits, so id text is assembled with array lookups.
_HEX_PAIRS = np.array([f"{b:02x}" for b in range(256)]).view(np.uint64)
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64 constants
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)

Columns = dict[str, np.ndarray]


def generate_rows(
    count: int, *, start: datetime, end: datetime, seed: int = 7, batch_size: int = 50_000
) -> Iterator[list[tuple]]:
    """Yield batches of row tuples in COLUMNS order, timestamps within [start, end) following the
    daily curve, sorted by ingested_at within the whole output (so that inserting them in order
    gives ids in ingest order: late rows get higher ids than their neighbours in event time).

    Arguments are checked here, not on the first ``next()``, so mistakes surface at the call site.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    return _batches(count, start, end, seed, batch_size)


def _batches(
    count: int, start: datetime, end: datetime, seed: int, batch_size: int
) -> Iterator[list[tuple]]:
    """Re-cut ingest-ordered chunks into batches: chunks do not depend on batch_size, so neither
    do the rows."""
    rng = np.random.default_rng(seed)
    id_keys = dict(
        zip(ID_FORMATS, rng.integers(0, 2**64, (len(ID_FORMATS), 2), dtype=np.uint64), strict=True)
    )
    user_ids = _id_text(np.arange(USER_POOL), "user", id_keys)
    users = np.array([*user_ids, None], dtype=object)  # index -1: anonymous
    buffer: list[tuple] = []
    for chunk in _ingest_ordered_chunks(rng, count, start, end):
        buffer.extend(_to_tuples(chunk, start, id_keys, users))
        while len(buffer) >= batch_size:
            yield buffer[:batch_size]
            del buffer[:batch_size]
    if buffer:
        yield buffer


def _ingest_ordered_chunks(
    rng: np.random.Generator, count: int, start: datetime, end: datetime
) -> Iterator[Columns]:
    """Generate slice by slice and release rows in ingested_at order.

    Rows of later slices start at or after the next slice boundary and are ingested after it, so any
    pending row ingested up to that boundary is final; the rest (session tails, late rows) wait.
    """
    if count == 0:
        return
    span_us = (end - start) // _ONE_US
    bin_starts = np.arange(0, span_us, BIN_US, dtype=np.int64)
    bin_ends = np.minimum(bin_starts + BIN_US, span_us)
    weights = _traffic_weights(start, bin_starts, bin_ends)
    bin_rows = rng.multinomial(count, weights / weights.sum())
    bins_per_slice = max(1, int(TARGET_SLICE_ROWS * len(bin_starts) / count))
    next_serial = dict.fromkeys(("request", "trace", "session"), 0)

    pending: Columns | None = None
    for lo in range(0, len(bin_starts), bins_per_slice):
        hi = min(lo + bins_per_slice, len(bin_starts))
        rows = int(bin_rows[lo:hi].sum())
        if rows:
            fresh = _slice_columns(
                rng, rows, bin_starts[lo:hi], bin_ends[lo:hi], weights[lo:hi], span_us
            )
            # Slice-local serial numbers (non-decreasing) continue the previous slices' ones.
            for kind, serial in next_serial.items():
                fresh[kind] += serial
                next_serial[kind] = int(fresh[kind][-1]) + 1
            if pending is not None:
                fresh = {k: np.concatenate((pending[k], v)) for k, v in fresh.items()}
            pending = fresh
        if pending is None:
            continue
        order = np.argsort(pending["ingested_us"], kind="stable")
        pending = {k: v[order] for k, v in pending.items()}
        watermark = bin_ends[hi - 1] if hi < len(bin_starts) else np.iinfo(np.int64).max
        ready = int(np.searchsorted(pending["ingested_us"], watermark, side="right"))
        if ready:
            yield {k: v[:ready] for k, v in pending.items()}
            left = {k: v[ready:] for k, v in pending.items()}
            pending = left if len(left["ingested_us"]) else None


def _traffic_weights(start: datetime, bin_starts: np.ndarray, bin_ends: np.ndarray) -> np.ndarray:
    """Expected traffic per bin: daily curve at the bin middle, weekend dip, times bin length."""
    mid_s = start.timestamp() + (bin_starts + bin_ends) / 2e6
    hour = (mid_s % 86_400) / 3600
    level = np.interp(hour, np.arange(24), HOURLY_TRAFFIC, period=24)
    weekday = (np.floor(mid_s / 86_400).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return level * np.where(weekday >= 5, WEEKEND_FACTOR, 1.0) * (bin_ends - bin_starts)


def _slice_columns(
    rng: np.random.Generator,
    n: int,
    bin_starts: np.ndarray,
    bin_ends: np.ndarray,
    weights: np.ndarray,
    span_us: int,
) -> Columns:
    """Draw ``n`` rows of sessions starting in these bins; times are in µs since ``start``."""
    # Sessions: lengths until n rows are covered, the last one cut short.
    sizes = np.minimum(rng.geometric(SESSION_CONTINUE_P, n), MAX_SESSION_REQUESTS)
    ends = np.cumsum(sizes)
    n_sess = int(np.searchsorted(ends, n)) + 1
    sizes, ends = sizes[:n_sess], ends[:n_sess]
    sizes[-1] -= ends[-1] - n
    ends[-1] = n
    first = ends - sizes
    sess = np.repeat(np.arange(n_sess), sizes)
    pos = np.arange(n) - first[sess]

    start_bin = rng.choice(len(bin_starts), n_sess, p=weights / weights.sum())
    sess_start = bin_starts[start_bin] + (
        rng.random(n_sess) * (bin_ends - bin_starts)[start_bin]
    ).astype(np.int64)
    sess_user = np.where(
        rng.random(n_sess) < ANONYMOUS_SESSION_RATE,
        -1,
        (USER_POOL * rng.random(n_sess) ** USER_SKEW).astype(np.int64),
    )
    sess_model = rng.choice(len(MODELS), n_sess, p=_MODEL_SHARE)
    sess_stream = rng.random(n_sess) < STREAM_RATE
    sess_policy = rng.choice(len(GUARDRAIL_POLICIES), n_sess, p=_POLICY_SHARE)
    sess_cache = rng.random(n_sess) < CACHE_ENABLED_RATE
    sess_legacy = rng.random(n_sess) < LEGACY_GATEWAY_RATE
    sess_routing = rng.choice(len(ROUTING_SHARE), n_sess, p=ROUTING_SHARE)

    # Traces: consecutive runs of 1-5 requests, never crossing a session boundary.
    trace_breaks = np.cumsum(rng.choice(len(TRACE_SIZE_P), n, p=TRACE_SIZE_P) + 1)
    new_trace = pos == 0
    new_trace[trace_breaks[trace_breaks < n]] = True
    trace = np.cumsum(new_trace) - 1

    # Model: mostly the session's, sometimes a side call; fallbacks swap in the backup model.
    requested = np.where(
        rng.random(n) < SESSION_MODEL_STICKINESS,
        sess_model[sess],
        rng.choice(len(MODELS), n, p=_MODEL_SHARE),
    )
    fallback = rng.random(n) < FALLBACK_RATE
    model = np.where(fallback, _FALLBACK[requested], requested)
    provider = _MODEL_PROVIDER[model]
    legacy = sess_legacy[sess]

    input_tokens = rng.lognormal(np.log(INPUT_MEDIAN_TOKENS), INPUT_SIGMA, n) * (
        1 + HISTORY_GROWTH * pos
    )
    input_tokens = np.clip(input_tokens, 8, 0.9 * _CONTEXT[model]).astype(np.int64)
    output_tokens = (
        rng.lognormal(np.log(OUTPUT_MEDIAN_TOKENS), OUTPUT_SIGMA, n) * _OUTPUT_SCALE[model]
    )
    output_tokens = np.clip(output_tokens, 1, MAX_OUTPUT_TOKENS).astype(np.int64)

    guard = _guardrails(rng, sess_policy[sess])
    kind = np.where(guard.blocked, _GUARDRAIL_BLOCK, 0)
    provider_error = ~guard.blocked & (rng.random(n) < PROVIDER_ERROR_RATE)
    kind[provider_error] = (
        rng.choice(len(ERROR_KINDS), int(provider_error.sum()), p=_ERROR_SHARE) + 1
    )
    is_error = kind > 0
    too_long = kind == _KIND_CODE["context_length"]
    input_tokens[too_long] = (
        _CONTEXT[model[too_long]] * rng.uniform(1.001, 1.25, int(too_long.sum()))
    ).astype(np.int64)
    output_tokens[is_error] = 0

    cache_draw = rng.random(n)
    cache = np.where(cache_draw < CACHE_SKIP_RATE, CACHE_SKIP, CACHE_MISS)
    cache[
        (cache_draw >= CACHE_SKIP_RATE)
        & (cache_draw < CACHE_SKIP_RATE + CACHE_HIT_RATE)
        & ~is_error
        & ~fallback
    ] = CACHE_HIT
    cache[~sess_cache[sess] | legacy] = CACHE_NONE
    hit = cache == CACHE_HIT

    latency = (
        _TTFT_MS[model] * rng.lognormal(0.0, TTFT_SIGMA, n)
        + output_tokens * _MS_PER_TOKEN[model] * rng.lognormal(0.0, DECODE_SIGMA, n)
        + input_tokens * PREFILL_MS_PER_TOKEN
        + np.where(fallback, rng.uniform(*FALLBACK_PENALTY_MS, n), 0.0)
        + np.where(guard.ran, rng.uniform(*GUARDRAIL_OVERHEAD_MS, n), 0.0)
    )
    latency[hit] = rng.uniform(*CACHE_HIT_LATENCY_MS, int(hit.sum()))
    bounds = _ERROR_LOG_LATENCY[kind[is_error]]
    latency[is_error] = np.exp(rng.uniform(bounds[:, 0], bounds[:, 1]))
    latency = latency.astype(np.int64)

    cost = input_tokens * _PRICE_IN[model] + output_tokens * _PRICE_OUT[model]
    # Nothing is billed for cache hits and rejected calls; a timed-out call was billed its prompt.
    cost[hit | (is_error & (kind != _KIND_CODE["timeout"]))] = 0.0
    status = _STATUS[kind]
    block_400 = guard.blocked & (rng.random(n) >= GUARDRAIL_BLOCK_403_SHARE)
    status[block_400] = GUARDRAIL_BLOCK_STATUSES[1]
    anthropic_overloaded = (kind == _KIND_CODE["overloaded"]) & (provider == _ANTHROPIC)
    status[anthropic_overloaded] = ANTHROPIC_OVERLOADED_STATUS

    # Event times: each request follows the previous one's response plus a think or step pause.
    pause_s = np.where(
        new_trace, rng.exponential(THINK_TIME_S, n), rng.exponential(TRACE_STEP_GAP_S, n)
    )
    gap_us = np.zeros(n)
    gap_us[1:] = latency[:-1] * 1e3 + pause_s[1:] * 1e6
    gap_us[first] = 0.0
    elapsed = np.cumsum(gap_us)
    offset = elapsed - elapsed[first][sess]
    # Sessions that would run past the end of the range are compressed to fit.
    room = np.maximum(span_us - 1 - sess_start, 0)
    last_offset = offset[ends - 1]
    squeeze = np.where(last_offset > room, room / np.maximum(last_offset, 1.0), 1.0)
    timestamp = sess_start[sess] + (offset * squeeze[sess]).astype(np.int64)

    late = rng.random(n) < LATE_RATE
    delay_s = np.exp(
        np.where(
            late, rng.uniform(*np.log(LATE_DELAY_S), n), rng.uniform(*np.log(INGEST_DELAY_S), n)
        )
    )
    ingested = np.minimum(
        timestamp + latency * 1000 + (delay_s * 1e6).astype(np.int64), timestamp + MAX_INGEST_LAG_US
    )

    return {
        "request": np.arange(n),
        "timestamp_us": timestamp,
        "ingested_us": ingested,
        "trace": trace,
        "session": sess,
        "user": sess_user[sess],
        "model": model,
        "model_requested": np.where(legacy, -1, requested),
        "latency_ms": latency,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": np.round(cost, 10),
        "status_code": status,
        "error_message": _error_messages(rng, kind, model, input_tokens, guard),
        "cache": cache,
        "guardrail_triggered": guard.triggered,
        "guardrail_results": guard.results,
        "routing": np.where(fallback, _FALLBACK_ROUTING, sess_routing[sess]),
        "fallback_used": fallback,
        "is_stream": sess_stream[sess],
    }


class _Guardrails(NamedTuple):
    ran: np.ndarray  # bool: the session's policy has guardrails
    triggered: np.ndarray  # bool: one of them returned block, flag or redact
    blocked: np.ndarray  # bool: ... and it was a block, so the request failed
    name: np.ndarray  # index into GUARDRAILS of the triggered guardrail (-1 if none)
    score: np.ndarray  # its score in hundredths
    results: np.ndarray  # object: JSON list of every check, None when none ran


def _guardrails(rng: np.random.Generator, policy: np.ndarray) -> _Guardrails:
    """Score every configured guardrail; at most one fires per request, as a policy stops at the
    first hit."""
    n = len(policy)
    rows = np.flatnonzero(_POLICY_SIZE[policy] > 0)
    m = len(rows)
    members = _POLICY_MEMBERS[policy[rows]]  # (m, width), -1 padded
    fires = rng.random(m) < GUARDRAIL_TRIGGER_RATE
    slot = (rng.random(m) * _POLICY_SIZE[policy[rows]]).astype(np.int64)
    fired = members[np.arange(m), slot]
    action = np.where(
        fires, 1 + (rng.random(m)[:, None] > _TRIGGER_ACTION_CDF[fired, :2]).sum(axis=1), 0
    )
    lowest = _MIN_SCORE[action]
    fired_score = (100 * (lowest + rng.random(m) * (1 - lowest))).astype(np.int64)
    allow_score = (
        100 * (1 - rng.random((m, _POLICY_WIDTH)) ** (1 / ALLOW_SCORE_CONCENTRATION))
    ).astype(np.int64)

    in_slot = fires[:, None] & (np.arange(_POLICY_WIDTH) == slot[:, None])
    codes = (members * len(GUARDRAIL_ACTIONS) + np.where(in_slot, action[:, None], 0)) * 101
    codes += np.where(in_slot, fired_score[:, None], allow_score)
    codes[members < 0] = -1  # the empty entry
    first, *others = codes.T
    parts = zip(
        _ENTRY_JSON[first].tolist(), *(_NEXT_ENTRY_JSON[c].tolist() for c in others), strict=True
    )

    ran, triggered, blocked = np.zeros((3, n), dtype=bool)
    ran[rows], triggered[rows], blocked[rows] = True, fires, action == 1
    name, score = np.full(n, -1), np.zeros(n, dtype=np.int64)
    name[rows], score[rows] = np.where(fires, fired, -1), np.where(fires, fired_score, 0)
    results = np.full(n, None, dtype=object)
    results[rows] = ["[" + "".join(entries) + "]" for entries in parts]
    return _Guardrails(ran, triggered, blocked, name, score, results)


def _error_messages(
    rng: np.random.Generator,
    kind: np.ndarray,
    model: np.ndarray,
    input_tokens: np.ndarray,
    guard: _Guardrails,
) -> np.ndarray:
    """Provider-specific error texts: errors are ~2% of rows, so formatting each is affordable."""
    messages = np.full(len(kind), None, dtype=object)
    rows = np.flatnonzero(kind)
    # Rate-limit arithmetic as providers report it: the request would push usage over the limit.
    headroom = rng.random(len(rows))
    fields = (rows, kind[rows], model[rows], input_tokens[rows], headroom)
    for i, k, m, tokens, room in zip(*(f.tolist() for f in fields), strict=True):
        spec = MODELS[m]
        if k == _GUARDRAIL_BLOCK:
            messages[i] = GUARDRAIL_BLOCK_MESSAGE.format(
                guardrail=GUARDRAILS[guard.name[i]], score=guard.score[i] / 100
            )
            continue
        templates = ERROR_KINDS[k - 1].messages
        limit = TPM_LIMITS.get(spec.provider, 0)
        used = limit - int(room * min(tokens, limit))
        messages[i] = templates.get(spec.provider, templates["*"]).format(
            model=spec.name,
            provider=spec.provider,
            org=ORG_IDS.get(spec.provider, ""),
            key=API_KEY_SUFFIX,
            limit=limit,
            used=used,
            requested=tokens,
            wait=60 * (used + tokens - limit) / max(limit, 1),
            timeout=GATEWAY_TIMEOUT_S,
            tokens=tokens,
            context=spec.context,
        )
    return messages


def _mix64(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """Keyed SplitMix64, a bijection on 64-bit ints: distinct serials give distinct random-looking
    words."""
    z = x.astype(np.uint64) * _GOLDEN_GAMMA + key
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def _id_text(serials: np.ndarray, kind: str, id_keys: dict[str, np.ndarray]) -> list[str]:
    """``prefix + hex`` ids derived from serial numbers: unique by construction (the first word is
    a bijection of the serial), cheap to carry through sorting as ints, and written as UCS4 code
    points rather than formatted one by one."""
    prefix, nbytes = ID_FORMATS[kind]
    words = [_mix64(serials, key) for key in id_keys[kind][: -(-nbytes // 8)]]
    raw = np.stack(words, axis=1).view(np.uint8)[:, :nbytes]
    codes = np.empty((len(serials), len(prefix) + 2 * nbytes), dtype=np.uint32)
    codes[:, : len(prefix)] = [ord(c) for c in prefix]
    codes[:, len(prefix) :] = _HEX_PAIRS[raw].view(np.uint32)
    return codes.view(f"U{codes.shape[1]}").ravel().tolist()


def _to_tuples(
    cols: Columns, start: datetime, id_keys: dict[str, np.ndarray], users: np.ndarray
) -> list[tuple]:
    """Row tuples in COLUMNS order; datetimes are built as ``start + timedelta`` (C-level adds)."""
    model, cache, status = cols["model"], cols["cache"], cols["status_code"]
    input_tokens, output_tokens = cols["input_tokens"], cols["output_tokens"]
    values = (
        _id_text(cols["request"], "request", id_keys),
        list(map(start.__add__, cols["timestamp_us"].astype("timedelta64[us]").tolist())),
        list(map(start.__add__, cols["ingested_us"].astype("timedelta64[us]").tolist())),
        _id_text(cols["trace"], "trace", id_keys),
        _id_text(cols["session"], "session", id_keys),
        users[cols["user"]].tolist(),
        _MODEL_NAMES[model].tolist(),
        _REQUESTED_NAMES[cols["model_requested"]].tolist(),
        _PROVIDER_NAMES[model].tolist(),
        cols["latency_ms"].tolist(),
        input_tokens.tolist(),
        output_tokens.tolist(),
        (input_tokens + output_tokens).tolist(),
        cols["cost"].tolist(),
        status.tolist(),
        (status >= 400).tolist(),
        cols["error_message"].tolist(),
        (cache == CACHE_HIT).tolist(),
        _CACHE_NAMES[cache].tolist(),
        cols["guardrail_triggered"].tolist(),
        cols["guardrail_results"].tolist(),
        _ROUTING_NAMES[cols["routing"]].tolist(),
        cols["fallback_used"].tolist(),
        cols["is_stream"].tolist(),
        [EVENT_TYPE] * len(model),
    )
    return list(zip(*values, strict=True))
