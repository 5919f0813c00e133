"""The web side: the Flask app factory and its blueprints (receiver, API, status pages, health,
OpenAPI), their JSON schemas and templates, and the gunicorn server that runs them."""
