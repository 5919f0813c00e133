"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from remediator.config import Settings
from remediator.logs import Redactor


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the receiver app. ``test_config`` may carry ``SETTINGS`` (a Settings) and Flask keys."""
    # No static folder: the pages inline their CSS, and an unused /static route would only answer 404.
    app = Flask(__name__, static_folder=None)
    # No redirect from "//" to "/": its page would echo the path, and the secret redactor would then
    # confirm a guessed secret put in it (/api/v1//hosts/<admin token>) to anyone. Such paths are 404.
    # Set before the blueprints add their rules, which take it when they are bound.
    app.url_map.merge_slashes = False
    test_config = dict(test_config or {})
    settings = test_config.pop("SETTINGS", None) or Settings.from_env()
    app.config["SETTINGS"] = settings
    # Flask refuses larger bodies with 413 before a view reads them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config.update(test_config)

    from remediator import extensions
    from remediator.web import api, health, openapi, receiver, security, ui

    extensions.init_app(app)
    security.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(receiver.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(openapi.bp)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        # Every error is JSON, so clients and Alertmanager logs show a reason, never an HTML page; the
        # exception's own headers (Allow on a 405, say) are kept.
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return {"error": exc.description or exc.name}, exc.code or 500, headers

    redact = Redactor(settings.secrets())

    @app.after_request
    def redact_secrets(response: Response) -> Response:
        # Secrets never appear in answers, even when a sender puts one into a label that is echoed back
        # (an alertname in a "skipped" entry, a timeline on /ui).
        if (
            redact.secrets
            and not response.direct_passthrough
            and (response.mimetype or "").startswith(("application/json", "text/"))
        ):
            text = response.get_data(as_text=True)
            cleaned = redact(text)
            if cleaned != text:
                response.set_data(cleaned)
        return response

    return app
