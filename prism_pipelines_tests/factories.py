"""Crafted gateway rows for tests: realistic values, controlled times."""

from __future__ import annotations

from datetime import datetime, timedelta

from prism_pipelines.source import INSERT_COLUMNS

_MODELS = (("gpt-4o", "openai"), ("claude-sonnet-4", "anthropic"), ("gemini-2.5-flash", "google"))


def gateway_rows(hour: datetime, count: int, *, start: int = 0, **overrides) -> list[tuple]:
    """``count`` rows with timestamps spread over ``hour``, ingested a second after their
    timestamp; request ids ``req_<hour>_<n>`` are unique per hour and index. ``overrides`` set a
    column to one value for every row."""
    rows = []
    step = 3600 / max(count, 1)
    for n in range(start, start + count):
        timestamp = hour + timedelta(seconds=(n - start) * step)
        model, provider = _MODELS[n % len(_MODELS)]
        is_error = n % 50 == 49
        values = {
            "request_id": f"req_{hour:%Y%m%d%H}_{n:07d}",
            "timestamp": timestamp,
            "ingested_at": timestamp + timedelta(seconds=1),
            "trace_id": f"trace_{n // 3:06d}",
            "session_id": f"sess_{n // 10:05d}",
            "user_id": f"user_{n % 17}",
            "model": model,
            "model_requested": model,
            "provider": provider,
            "latency_ms": 200 + (n * 37) % 1800,
            "input_tokens": 100 + n % 900,
            "output_tokens": 0 if is_error else 20 + n % 400,
            "total_tokens": 100 + n % 900 + (0 if is_error else 20 + n % 400),
            "cost": round(0.0001 * (1 + n % 40), 6),
            "status_code": 429 if is_error else 200,
            "is_error": is_error,
            "error_message": "Rate limit reached for requests" if is_error else None,
            "cache_hit": n % 7 == 0,
            "cache_status": "hit" if n % 7 == 0 else "miss",
            "guardrail_triggered": False,
            "guardrail_results": None,
            "routing_strategy": "",
            "fallback_used": False,
            "is_stream": n % 3 == 0,
            "event_type": "request",
        }
        values.update(overrides)
        rows.append(tuple(values[c] for c in INSERT_COLUMNS))
    return rows
