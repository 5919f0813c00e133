"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response

from remediator import metrics
from remediator.extensions import get_redis, get_settings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up; says nothing about Redis."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Any:
    """Ready when Redis answers PING: without it no work can be stored."""
    try:
        get_redis().ping()
    except redis.RedisError as exc:
        return {"status": "unavailable", "redis": type(exc).__name__}, 503
    return {"status": "ok", "redis": "ok"}


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    try:
        conn = get_redis()
    except redis.RedisError:
        conn = None
    text = metrics.render(conn, get_settings().queue)
    # content_type, not mimetype: Flask appends "; charset=utf-8" to a mimetype, which already has one.
    return Response(text, content_type=metrics.CONTENT_TYPE)
