import pytest, schemathesis
from hypothesis import settings, HealthCheck
from helpers import make_settings, WEBHOOK_TOKEN, ADMIN_TOKEN
from remediator import create_app

@pytest.fixture
def st_schema(redis_url):
    app = create_app({"SETTINGS": make_settings(redis_url), "TESTING": True})
    return schemathesis.openapi.from_wsgi("/openapi.json", app)

schema = schemathesis.pytest.from_fixture("st_schema")

@schema.parametrize()
@settings(max_examples=200, deadline=None)
def test_api(case):
    tok = WEBHOOK_TOKEN if case.path.startswith("/webhook") else ADMIN_TOKEN
    if isinstance(case.body, dict) and "token" in case.body:
        case.body["token"] = ADMIN_TOKEN
    case.call_and_validate(headers={"Authorization": f"Bearer {tok}"})
