"""Cloud providers: is a host's instance still there, and is the provider itself healthy?

Two questions diagnosis and the fleet view ask:

* ``instance_state(providers, "vast", "123")`` -- what the provider says of one instance, as a
  ``CloudState``. ``not_asked`` when that provider is not configured, ``unknown`` (with the reason)
  when its API fails or reports a state that says nothing about the instance's fate.
* ``provider_status_ok(url)`` -- the provider's statuspage.io indicator: ``none``/``minor`` is OK.

State mapping (provider value -> CloudState), chosen so that ``terminated`` means "the instance and
its disk are gone" and ``stopped`` means "it exists but runs nothing", the two facts the ladder acts on:

==================  =========================================================  ============
provider            value                                                       CloudState
==================  =========================================================  ============
Vast actual_status  running; loading, rebooting, null/provisioning (coming up)  running
Vast actual_status  stopped, exited, frozen                                     stopped
Vast actual_status  unknown, offline (no heartbeat from the machine)            unknown
Vast                the instance is not in ``show_instances``                   terminated
Lambda status       active; booting (coming up)                                 running
Lambda status       unhealthy (Lambda's own health check fails)                 unknown
Lambda status       terminating, terminated, preempted, or not listed           terminated
==================  =========================================================  ============

When Vast reports no ``actual_status`` its ``cur_state`` (the machine contract) decides: ``running``
-> running, ``stopped`` -> stopped, anything else -> unknown. Any other value maps to ``unknown``.

"Not listed" means terminated only in a listing the remediator can trust: a 2xx JSON answer of the
documented shape, every row an object with an ``id``, every page fetched, ``success`` not false and no
``error``. Anything else -- an error status, ``{"success": false}``, a missing or ill-typed list, a row
without an id, fewer rows than the provider announced, not JSON, a timeout, a refused connection --
is a ``ProviderError``, and the instance's state is ``unknown`` with a reason that says the provider
answer was unusable (``ANSWER_UNUSABLE``). An empty listing is never read as "everything is gone"
unless the provider said so in a well-formed answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import requests

from remediator.clients.http import RetryPolicy, TransportFailure, host_of, request, scrub
from remediator.config import Settings
from remediator.exceptions import ProviderError

log = logging.getLogger(__name__)

VAST_PAGE_SIZE = 25  # instances per page, as the SDK's show_instances asks for
VAST_MAX_PAGES = 400  # pages followed at most (10,000 instances), so a looping next_token cannot hang us
STATUS_OK_INDICATORS = frozenset({"none", "minor"})  # statuspage.io indicators that are not an outage
ANSWER_UNUSABLE = "provider answer unusable"  # what the reason of an unknown state says when the API failed
ERROR_TEXT_CHARS = 120  # characters of a provider's own error message kept in a reason


class CloudState(StrEnum):
    """What a cloud provider says of a host's instance."""

    RUNNING = "running"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"
    NOT_ASKED = "not_asked"


@dataclass(frozen=True)
class InstanceState:
    """A CloudState and why: the provider's own value, or what went wrong asking."""

    state: CloudState
    reason: str = ""


class Provider(Protocol):
    """A cloud provider client."""

    name: str

    def instance_state(self, instance_id: str) -> CloudState: ...

    def instance_states(self, instance_ids: Iterable[str]) -> dict[str, CloudState]: ...


_VAST_STATUS: dict[str, CloudState] = {
    "running": CloudState.RUNNING,
    "loading": CloudState.RUNNING,
    "rebooting": CloudState.RUNNING,
    "provisioning": CloudState.RUNNING,
    "created": CloudState.RUNNING,
    "stopped": CloudState.STOPPED,
    "exited": CloudState.STOPPED,
    "frozen": CloudState.STOPPED,
    "unknown": CloudState.UNKNOWN,
    "offline": CloudState.UNKNOWN,
}
_VAST_CUR_STATE: dict[str, CloudState] = {"running": CloudState.RUNNING, "stopped": CloudState.STOPPED}

_LAMBDA_STATUS: dict[str, CloudState] = {
    "active": CloudState.RUNNING,
    "booting": CloudState.RUNNING,
    "unhealthy": CloudState.UNKNOWN,
    "terminating": CloudState.TERMINATED,
    "terminated": CloudState.TERMINATED,
    "preempted": CloudState.TERMINATED,
}


def vast_state(row: Mapping[str, Any]) -> CloudState:
    """The CloudState of one row of Vast's instance list."""
    actual = row.get("actual_status")
    if actual:
        return _VAST_STATUS.get(str(actual).lower(), CloudState.UNKNOWN)
    return _VAST_CUR_STATE.get(str(row.get("cur_state") or "").lower(), CloudState.UNKNOWN)


def lambda_state(row: Mapping[str, Any]) -> CloudState:
    """The CloudState of one entry of Lambda's instance list."""
    return _LAMBDA_STATUS.get(str(row.get("status") or "").lower(), CloudState.UNKNOWN)


class VastProvider:
    """Vast.ai through the official ``vastai`` SDK, pointed at ``url``.

    The SDK is given the key and the server explicitly, so it reads no key file from $HOME and
    contacts no other host; ``explain``/``curl`` stay off because they print the Authorization header.
    The SDK retries 429/502/503/504 itself (``retry`` attempts in all, 0.15 s growing by 1.5x).
    """

    name = "vast"
    row_state = staticmethod(vast_state)  # one listed row's CloudState (listings.SharedListing reads it)

    def __init__(self, url: str, api_key: str, *, retry: int = 3, timeout: float = 10.0):
        if not api_key:
            raise ValueError("VastProvider needs an API key (REMEDIATOR_VAST_API_KEY)")
        from vastai import VastAI  # imported here: the package takes ~0.5 s to import

        self.url = url.rstrip("/")
        self._api_key = api_key
        self._sdk = VastAI(api_key=api_key, server_url=self.url, retry=retry, raw=True, quiet=True)
        self._sdk.client.timeout = timeout  # seconds per request; the SDK's own default is 120

    def __repr__(self) -> str:
        return f"VastProvider(host={host_of(self.url)!r})"

    def instances(self) -> list[dict[str, Any]]:
        """Every instance of the account: ``GET /api/v1/instances/`` page by page, as show_instances does.

        Raises ProviderError unless every page is a well-formed success (see the module docstring)."""
        params: dict[str, Any] = {
            "select_filters": {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": VAST_PAGE_SIZE,
        }
        rows: list[dict[str, Any]] = []
        announced: int | None = None
        for _ in range(VAST_MAX_PAGES):
            data = self._page(params)
            rows.extend(
                _stated(
                    _rows(data["instances"], f"vast: {host_of(self.url)}"),
                    ("actual_status", "cur_state"),
                    f"vast: {host_of(self.url)}",
                )
            )
            total = data.get("total_instances")
            if announced is None and isinstance(total, int) and not isinstance(total, bool):
                announced = total
            token = data.get("next_token")
            if not token:
                if announced is not None and len(rows) < announced:
                    raise ProviderError(
                        f"vast: {host_of(self.url)} listed {len(rows)} of the {announced} instances "
                        "it announced"
                    )
                return rows
            if not isinstance(token, str | int) or isinstance(token, bool):
                raise ProviderError(f"vast: {host_of(self.url)} answered a next_token that is not a token")
            params["after_token"] = token
        raise ProviderError(f"vast: more than {VAST_MAX_PAGES} pages of instances; giving up")

    def _page(self, params: dict[str, Any]) -> dict[str, Any]:
        """One page of the listing, checked: a JSON object, not ``success: false``, with an instances list."""
        where = f"vast: {host_of(self.url)}"
        try:
            data = self._sdk.show_instances_v1(params)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise ProviderError(f"vast: HTTP {status} from {host_of(self.url)}") from None
        except ValueError:  # before RequestException: requests' JSONDecodeError is both
            raise ProviderError(f"{where} answered something that is not JSON") from None
        except requests.RequestException as exc:
            raise ProviderError(f"{where} unreachable ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ProviderError(f"{where} answered a JSON {type(data).__name__}, not an object")
        if "success" in data and data["success"] is not True:
            said = scrub(_said(data.get("error"), data.get("msg")), [self._api_key])
            raise ProviderError(f"{where} answered success={data['success']!r}{said}")
        if not isinstance(data.get("instances"), list):
            raise ProviderError(f"{where} answered without an 'instances' list")
        return data

    def instance_states(self, instance_ids: Iterable[str]) -> dict[str, CloudState]:
        """States of several instances from one trustworthy listing, where an id not listed is terminated;
        ProviderError when the listing cannot be trusted."""
        return _listed_states(self.instances(), instance_ids, self.row_state)

    def instance_state(self, instance_id: str) -> CloudState:
        """The state of one instance; raises ProviderError when the API fails."""
        return self.instance_states([instance_id])[str(instance_id)]


class LambdaProvider:
    """Lambda Cloud REST API: ``GET {url}/api/v1/instances`` with a Bearer key, answer ``{"data": [...]}``."""

    name = "lambda"
    row_state = staticmethod(lambda_state)

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ):
        if not api_key:
            raise ValueError("LambdaProvider needs an API key (REMEDIATOR_LAMBDA_API_KEY)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/api/v1") else base + "/api/v1"
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()

    def __repr__(self) -> str:
        return f"LambdaProvider(host={host_of(self.url)!r})"

    def instances(self) -> list[dict[str, Any]]:
        """Every running or recently terminated instance of the account."""
        try:
            response = request(
                self.session,
                "GET",
                self.url + "/instances",
                policy=self.retry,
                what=self.name,
                headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
            )
        except TransportFailure as exc:
            raise ProviderError(f"lambda: {exc}") from None
        where = f"lambda: {host_of(self.url)}"
        if not 200 <= response.status_code < 300:
            raise ProviderError(f"lambda: HTTP {response.status_code} from {host_of(self.url)}")
        try:
            data = response.json()
        except ValueError:
            raise ProviderError(f"{where} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderError(f"{where} answered a JSON {type(data).__name__}, not an object")
        if data.get("error"):
            error = data["error"]
            said = _said(*(error.get(k) for k in ("code", "message"))) if isinstance(error, dict) else ""
            raise ProviderError(f"{where} answered an error{scrub(said or _said(error), [self._api_key])}")
        if not isinstance(data.get("data"), list):
            raise ProviderError(f"{where} answered without a 'data' list")
        return _stated(_rows(data["data"], where), ("status",), where)

    def instance_states(self, instance_ids: Iterable[str]) -> dict[str, CloudState]:
        """States of several instances from one trustworthy listing, where an id not listed is terminated;
        ProviderError when the listing cannot be trusted."""
        return _listed_states(self.instances(), instance_ids, self.row_state)

    def instance_state(self, instance_id: str) -> CloudState:
        """The state of one instance; raises ProviderError when the API fails."""
        return self.instance_states([instance_id])[str(instance_id)]


def _listed_states(
    rows: list[dict[str, Any]], instance_ids: Iterable[str], row_state: Callable[[dict[str, Any]], CloudState]
) -> dict[str, CloudState]:
    """Each instance's state in a listing; one the listing does not hold is terminated."""
    by_id = {str(row.get("id")): row for row in rows}
    return {
        str(i): row_state(by_id[str(i)]) if str(i) in by_id else CloudState.TERMINATED for i in instance_ids
    }


def _rows(listed: list[Any], where: str) -> list[dict[str, Any]]:
    """The rows of a listing; ProviderError when one is not an object with an id (a listing with a
    row that cannot be read cannot prove that an instance is absent from it)."""
    for row in listed:
        if not isinstance(row, dict) or row.get("id") in (None, ""):
            raise ProviderError(f"{where} listed an instance that is not an object with an id")
    return listed


def _said(*texts: Any) -> str:
    """``: <the provider's own words>``, shortened, for a reason; "" when it said nothing."""
    words = " ".join(str(t) for t in texts if t not in (None, ""))
    return f": {words[:ERROR_TEXT_CHARS]!r}" if words else ""


def _stated(rows: list[dict[str, Any]], fields: tuple[str, ...], where: str) -> list[dict[str, Any]]:
    """The rows of a listing; ProviderError when one carries none of the state ``fields``: a listing
    that is not the API's shape cannot prove that an instance missing from it is gone (terminated)."""
    for row in rows:
        if not any(row.get(name) for name in fields):
            raise ProviderError(f"{where} listed an instance without {' or '.join(fields)}")
    return rows


def providers_from_settings(settings: Settings) -> dict[str, Provider]:
    """The providers whose URL and API key are both set, keyed ``"vast"`` / ``"lambda"``."""
    providers: dict[str, Provider] = {}
    if settings.vast_url and settings.vast_api_key:
        providers["vast"] = VastProvider(settings.vast_url, settings.vast_api_key)
    elif settings.vast_url:
        log.warning("REMEDIATOR_VAST_URL is set but REMEDIATOR_VAST_API_KEY is not; Vast will not be asked")
    if settings.lambda_url and settings.lambda_api_key:
        providers["lambda"] = LambdaProvider(settings.lambda_url, settings.lambda_api_key)
    elif settings.lambda_url:
        log.warning(
            "REMEDIATOR_LAMBDA_URL is set but REMEDIATOR_LAMBDA_API_KEY is not; Lambda will not be asked"
        )
    return providers


def instance_state(
    providers: Mapping[str, Provider],
    provider_name: str | None,
    instance_id: str | None,
    since: float | None = None,
) -> InstanceState:
    """What the host's provider says of its instance; never raises for an API failure. ``since``: a
    provider whose listing is shared (``remediator.listings.SharedListing``) answers from one fetched at
    or after that moment (unix seconds); any other provider asks its API now anyway."""
    if not provider_name or not instance_id:
        return InstanceState(CloudState.NOT_ASKED, "the host has no provider or instance id")
    provider = providers.get(provider_name)
    if provider is None:
        return InstanceState(CloudState.NOT_ASKED, f"provider {provider_name!r} is not configured")
    try:
        fresh = getattr(provider, "instance_state_since", None) if since is not None else None
        state = (
            fresh(str(instance_id), since) if fresh is not None else provider.instance_state(str(instance_id))
        )
    except ProviderError as exc:
        log.warning("instance %s on %s: state unknown: %s", instance_id, provider_name, exc)
        return InstanceState(CloudState.UNKNOWN, f"{ANSWER_UNUSABLE} ({exc}): instance state unknown")
    return InstanceState(state, f"{provider_name} reports instance {instance_id} {state.value}")


def provider_status_ok(
    url: str | None, *, retry: RetryPolicy | None = None, session: requests.Session | None = None
) -> bool | None:
    """Whether a statuspage.io-style page (``{"status": {"indicator": ...}}``) reports no major outage.

    None when no URL is configured; False when the page is unreachable or unreadable, because an
    unanswered status page is no evidence that the provider is fine.
    """
    if not url:
        return None
    session = session or requests.Session()
    try:
        response = request(session, "GET", url, policy=retry or RetryPolicy(attempts=2), what="status")
    except TransportFailure as exc:
        log.warning("provider status %s: %s", host_of(url), exc)
        return False
    if not response.ok:
        log.warning("provider status %s: HTTP %d", host_of(url), response.status_code)
        return False
    try:
        indicator = response.json()["status"]["indicator"]
    except (ValueError, KeyError, TypeError):
        log.warning("provider status %s: no status.indicator in the answer", host_of(url))
        return False
    ok = indicator in STATUS_OK_INDICATORS
    if not ok:
        log.warning("provider status %s: indicator %r", host_of(url), indicator)
    return ok


def provider_statuses(settings: Settings, **kwargs: Any) -> dict[str, bool | None]:
    """``provider_status_ok`` of every provider's configured status URL, keyed "vast"/"lambda"."""
    return {
        "vast": provider_status_ok(settings.vast_status_url, **kwargs),
        "lambda": provider_status_ok(settings.lambda_status_url, **kwargs),
    }
