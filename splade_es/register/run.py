"""The executor: runs a plan's checks, then finds, reuses, updates or creates each planned
object, and deletes them again on ``unregister``.

Idempotent: every object is found by its deterministic name first. One that matches the plan is
reused, a pipeline that differs is sent again, anything else that differs is refused with the
fields that differ (ml-commons will not update a connector while its model is deployed, and an
engine never shows a stored secret to compare). Found objects without register's marker
(``plan.MARKER`` in the description; for Elasticsearch endpoints, serve's embed URL) are never
reused nor deleted. With ``dry_run`` only the read-only requests go out (checks, finds, model
states); every write is recorded, secrets redacted, instead of sent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import elasticsearch
import opensearchpy

from .. import defaults
from ..api_keys import ApiKeys
from ..connect import ClientOrCluster, Cluster, Engine, Version, call
from ..exceptions import ClusterError, ConfigurationError, SpladeEsError, UnsupportedFeatureError
from ..retry import RetryPolicy
from . import elasticsearch as es_plan
from . import opensearch as os_plan
from .plan import (
    REDACTED,
    Check,
    Deployment,
    Existing,
    Plan,
    PlannedObject,
    Problem,
    RegisterConfig,
    Request,
    differences,
    reveal,
    serve_host,
)

log = logging.getLogger(__name__)

Resolve = Callable[[str], list[str]]
Sleep = Callable[[float], None]


class Planner(Protocol):
    def registration_plan(
        self, config: RegisterConfig, version: Version, *, private_host: bool
    ) -> Plan: ...

    def removal_plan(self, config: RegisterConfig, version: Version) -> Plan: ...


_PLANNERS: dict[Engine, Planner] = {"opensearch": os_plan, "elasticsearch": es_plan}
UNDEPLOY_AGAIN_EVERY = 4  # polls of a model that stays deployed before undeploying it again
POLLING = RetryPolicy(
    max_retries=defaults.TASK_POLLS,
    initial_backoff=defaults.INITIAL_BACKOFF,
    max_backoff=defaults.TASK_POLL_MAX_WAIT,
    jitter=0.0,
)


@dataclass(frozen=True, kw_only=True)
class Registration:
    """What ``register`` did (or, with ``dry_run``, would do).

    ``outputs``: the ids to use (``document_model_id``, ``query_model_id``,
    ``ingest_pipeline``, ``search_pipeline`` on OpenSearch; ``document_inference_id``,
    ``query_inference_id`` on Elasticsearch); None for what a dry run would create.
    ``actions``: one line per object and setting ("created connector ... (id)");
    ``requests``: the writes sent (or, in a dry run, not sent), secrets redacted.
    """

    engine: Engine
    version: Version
    serve_url: str
    outputs: dict[str, str | None]
    actions: tuple[str, ...]
    requests: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()
    usage: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """The machine-readable summary (``splade-es register --json``)."""
        found: dict[str, Any] = {"engine": self.engine, "serve_url": self.serve_url}
        found.update(self.outputs)
        if self.dry_run:
            found["dry_run"] = True
            found["requests"] = list(self.requests)
        return found


@dataclass(frozen=True, kw_only=True)
class Unregistration:
    """What ``unregister`` deleted (or would delete), and what it found nothing of."""

    engine: Engine
    deleted: tuple[str, ...]
    absent: tuple[str, ...]
    kept: tuple[str, ...]  # found by name but not register's: left alone
    requests: tuple[dict[str, Any], ...]
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "engine": self.engine,
            "deleted": list(self.deleted),
            "absent": list(self.absent),
            "kept": list(self.kept),
        }
        if self.dry_run:
            found["dry_run"] = True
            found["requests"] = list(self.requests)
        return found


def register(
    target: ClientOrCluster,
    config: RegisterConfig,
    *,
    resolve: Resolve | None = None,
    sleep: Sleep = time.sleep,
) -> Registration:
    """Point the cluster at ``splade-es serve``: check its settings (changed only with
    ``config.apply_settings``), then create what the engine needs (see ``opensearch.py`` /
    ``elasticsearch.py``), reusing what an earlier run created. ``resolve`` names the
    addresses of a host (default: this machine's resolver), to tell whether serve's is private."""
    serve_url, _ = config.require_serve()
    cluster = _cluster(target)
    planner = _PLANNERS[cluster.engine]
    private = is_private_host(serve_host(serve_url), resolve or resolve_host)
    plan = planner.registration_plan(config, cluster.version, private_host=private)
    session = Session(cluster, config, sleep)
    problems = session.check(plan.checks)
    found = [session.decide(planned) for planned in plan.objects]  # refusals before any write
    session.fix_settings(problems)
    for planned, existing in zip(plan.objects, found, strict=True):
        session.carry_out(planned, existing)
    outputs = {o.output: session.ids.get(o.key) for o in plan.objects if o.output}
    shown = {k: v or f"<{k} once created>" for k, v in outputs.items()}
    return Registration(
        engine=cluster.engine,
        version=cluster.version,
        serve_url=serve_url,
        outputs=outputs,
        actions=tuple(session.actions),
        requests=tuple(session.requests),
        notes=plan.notes,
        usage=plan.usage(shown),
        dry_run=config.dry_run,
    )


def unregister(
    target: ClientOrCluster, config: RegisterConfig, *, sleep: Sleep = time.sleep
) -> Unregistration:
    """Delete what ``register`` created under ``config.name`` (undeploying models first), in
    the reverse order of creation; objects of those names that register did not create are
    left alone and listed in ``kept``."""
    cluster = _cluster(target)
    plan = _PLANNERS[cluster.engine].removal_plan(config, cluster.version)
    session = Session(cluster, config, sleep)
    deleted, absent, kept = [], [], []
    for planned in reversed(plan.objects):
        found = session.find(planned)
        if not found:
            absent.append(f"{planned.what} {planned.name}")
        for existing in found:
            label = f"{planned.what} {planned.name} ({existing.id})"
            if not existing.ours:
                kept.append(label)
                continue
            session.remove(planned, existing.id)
            deleted.append(label)
    return Unregistration(
        engine=cluster.engine,
        deleted=tuple(deleted),
        absent=tuple(absent),
        kept=tuple(kept),
        requests=tuple(session.requests),
        dry_run=config.dry_run,
    )


def _cluster(target: ClientOrCluster) -> Cluster:
    return target if isinstance(target, Cluster) else Cluster.from_client(target)


# ------------------------------------------------------------------ the session
class Session:
    """One run against one cluster: sends (or, dry, records) requests and remembers ids."""

    def __init__(self, cluster: Cluster, config: RegisterConfig, sleep: Sleep) -> None:
        self.cluster = cluster
        self.config = config
        self.sleep = sleep
        self.secrets = tuple(s for s in (config.api_key,) if s)
        self.ids: dict[str, str] = {}
        self.actions: list[str] = []
        self.requests: list[dict[str, Any]] = []

    # -------------------------------------------------------------- sending
    def read(self, request: Request, doing: str) -> Any:
        """Send a read-only request (dry runs too)."""
        return self._send(request, doing)

    def write(self, request: Request, doing: str) -> Any:
        """Send a write; in a dry run only record it (and answer None)."""
        self.requests.append(request.printable(self.ids))
        if self.config.dry_run:
            return None
        log.info("register: %s", doing)
        return self._send(request, doing)

    def _send(self, request: Request, doing: str) -> Any:
        body = reveal(request.body, self.ids) if request.body is not None else None
        perform = _TRANSPORTS[self.cluster.engine]
        try:
            return perform(self.cluster.client, request, body, doing)
        except SpladeEsError as exc:
            if _holds(exc, self.secrets):
                raise _without_secrets(exc, self.secrets, doing) from None
            raise

    # -------------------------------------------------------------- checks
    def check(self, checks: tuple[Check, ...]) -> list[Problem]:
        """Run the read-only checks; stop on a problem no setting fixes, return the rest."""
        problems: list[Problem] = []
        for check in checks:
            problems += check.judge(self.read(check.request, "reading the cluster's state"))
        fatal = [p.message for p in problems if p.settings is None]
        if fatal:
            raise UnsupportedFeatureError("; ".join(fatal))
        return problems

    def fix_settings(self, problems: list[Problem]) -> None:
        """Change the settings ``problems`` name (``apply_settings``; a dry run records the
        change), or stop naming them and the request that fixes them."""
        if not problems:
            return
        fix = Request("PUT", "/_cluster/settings", body=settings_fix(problems))
        said = "; ".join(p.message for p in problems)
        if not (self.config.apply_settings or self.config.dry_run):
            raise ConfigurationError(
                f"{said}: fix with PUT _cluster/settings {json.dumps(fix.body)} "
                "or run again with --apply-settings"
            )
        self.write(fix, "changing cluster settings")
        if not self.config.dry_run:
            self.actions.append(f"changed cluster settings: {said}")
        elif self.config.apply_settings:
            self.actions.append(f"would change cluster settings: {said}")
        else:
            self.actions.append(f"needs cluster settings (--apply-settings): {said}")

    # -------------------------------------------------------------- objects
    def find(self, planned: PlannedObject) -> list[Existing]:
        answer = self.read(planned.find, f"looking for the {planned.what} {planned.name}")
        return planned.existing(answer) if answer is not None else []

    def decide(self, planned: PlannedObject) -> Existing | None:
        """Find ``planned`` (read-only) and refuse what cannot be reused: several of one name,
        one register did not create, or one that differs and cannot be updated."""
        found = self.find(planned)
        if len(found) > 1:
            ids = ", ".join(e.id for e in found)
            raise ConfigurationError(
                f"{len(found)} {planned.what}s are named {planned.name!r} ({ids}); delete the "
                "extra ones, or run with --unregister and register again"
            )
        if not found:
            return None
        existing = found[0]
        label = f"{planned.what} {planned.name} ({existing.id})"
        if not existing.ours:
            raise ConfigurationError(
                f"a {label} exists that splade-es register did not create; pass another --name"
            )
        self.ids[planned.key] = existing.id
        changed = self._changes(planned, existing)
        if changed and not planned.updatable:
            raise ConfigurationError(
                f"the {label} differs from this registration in {', '.join(changed)}; run "
                "'splade-es register --unregister' with the same --name first, or pass "
                "another --name"
            )
        return existing

    def carry_out(self, planned: PlannedObject, existing: Existing | None) -> None:
        """Create ``planned`` (``existing`` is None), update it, or keep it; then deploy it
        if it is a model."""
        if existing is None:
            self._create(planned)
        else:
            self._update(planned, existing)
        if planned.deployment is not None:
            self._deploy(planned, planned.deployment, self.ids.get(planned.key))

    def _changes(self, planned: PlannedObject, existing: Existing) -> list[str]:
        return differences(reveal(planned.definition, self.ids), existing.definition)

    def _update(self, planned: PlannedObject, existing: Existing) -> None:
        label = f"{planned.what} {planned.name} ({existing.id})"
        changed = self._changes(planned, existing)  # again: ids made since may be in it
        if not changed or planned.create is None:
            self.actions.append(f"reused {label}")
            return
        self.write(planned.create, f"updating the {label}")
        verb = "would update" if self.config.dry_run else "updated"
        self.actions.append(f"{verb} {label}: {', '.join(changed)}")

    def _create(self, planned: PlannedObject) -> None:
        if planned.create is None:
            return
        answer = self.write(planned.create, f"creating the {planned.what} {planned.name}")
        if self.config.dry_run:
            self.actions.append(f"would create {planned.what} {planned.name}")
            return
        ident = planned.created_id(answer)
        self.ids[planned.key] = ident
        self.actions.append(f"created {planned.what} {planned.name} ({ident})")

    # -------------------------------------------------------------- deploying
    def _deploy(self, planned: PlannedObject, how: Deployment, ident: str | None) -> None:
        if ident is None:  # a dry run's model that does not exist yet
            self.write(how.deploy.bind(id=f"<id of {planned.key}>"), "deploying")
            return
        state = self.read(how.state.bind(id=ident), f"reading the state of model {ident}")
        if how.is_deployed(state):
            return
        answer = self.write(how.deploy.bind(id=ident), f"deploying the model {planned.name}")
        if self.config.dry_run:
            self.actions.append(f"would deploy model {planned.name} ({ident})")
            return
        task_id = (answer or {}).get("task_id")
        if task_id:
            self._wait_for_task(how, str(task_id), f"deploying the model {planned.name} ({ident})")
        self.actions.append(f"deployed model {planned.name} ({ident})")

    def _wait_for_task(self, how: Deployment, task_id: str, doing: str) -> None:
        waited = 0.0
        for poll in range(1, POLLING.max_retries + 2):
            task = self.read(how.task.bind(task_id=task_id), f"{doing}: reading task {task_id}")
            finished, error = how.task_outcome(task)
            if error:
                raise ClusterError(f"{doing} failed: {error}")
            if finished:
                return
            pause = POLLING.backoff(poll)
            self.sleep(pause)
            waited += pause
        raise ClusterError(f"{doing}: task {task_id} not finished after {waited:.0f} s")

    # -------------------------------------------------------------- removing
    def remove(self, planned: PlannedObject, ident: str) -> None:
        if planned.deployment is not None:
            self._undeploy(planned, planned.deployment, ident)
        for request in planned.delete:
            self.write(
                request.bind(id=ident), f"deleting the {planned.what} {planned.name} ({ident})"
            )

    def _undeploy(self, planned: PlannedObject, how: Deployment, ident: str) -> None:
        state = self.read(how.state.bind(id=ident), f"reading the state of model {ident}")
        if not how.is_loaded(state):
            return
        self.write(how.undeploy.bind(id=ident), f"undeploying the model {planned.name} ({ident})")
        if self.config.dry_run:
            return
        waited = 0.0
        for poll in range(1, POLLING.max_retries + 2):
            state = self.read(how.state.bind(id=ident), f"reading the state of model {ident}")
            if not how.is_loaded(state):
                return
            if poll % UNDEPLOY_AGAIN_EVERY == 0:
                # ml-commons can drop an undeploy that meets a deploy in flight (the models a
                # restarted node redeploys); undeploying again is harmless.
                self.write(how.undeploy.bind(id=ident), f"undeploying {planned.name} again")
            pause = POLLING.backoff(poll)
            self.sleep(pause)
            waited += pause
        raise ClusterError(f"model {planned.name} ({ident}) still deployed after {waited:.0f} s")


def settings_fix(problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """The ``PUT _cluster/settings`` body that fixes ``problems``."""
    body: dict[str, dict[str, Any]] = {}
    for problem in problems:
        if problem.settings:
            body.setdefault(problem.section, {}).update(problem.settings)
    return body


# ------------------------------------------------------------------ transports
def _perform_opensearch(client: Any, request: Request, body: Any, doing: str) -> Any:
    try:
        return call(
            lambda: client.transport.perform_request(
                request.method, request.path, params=dict(request.params) or None, body=body
            ),
            doing,
        )
    except ClusterError as exc:
        if request.missing_ok and isinstance(exc.__cause__, opensearchpy.NotFoundError):
            return None
        raise


_JSON = {"accept": "application/json", "content-type": "application/json"}


def _perform_elasticsearch(client: Any, request: Request, body: Any, doing: str) -> Any:
    headers = _JSON if body is not None else {"accept": "application/json"}
    try:
        answer = call(
            lambda: client.perform_request(
                request.method,
                request.path,
                params=dict(request.params) or None,
                headers=headers,
                body=body,
            ),
            doing,
        )
    except ClusterError as exc:
        if request.missing_ok and isinstance(exc.__cause__, elasticsearch.NotFoundError):
            return None
        raise
    return getattr(answer, "body", answer)


_TRANSPORTS: dict[str, Callable[[Any, Request, Any, str], Any]] = {
    "opensearch": _perform_opensearch,
    "elasticsearch": _perform_elasticsearch,
}


def _holds(exc: BaseException, secrets: tuple[str, ...]) -> bool:
    """Whether ``exc`` or the client error under it holds a secret (the message ``call``
    made is cut short, maybe inside the secret: the client's own text is what tells)."""
    texts = (str(exc), str(exc.__cause__ or ""))
    return any(secret in text for secret in secrets for text in texts)


def _without_secrets(exc: SpladeEsError, secrets: tuple[str, ...], doing: str) -> SpladeEsError:
    """``exc`` made again from the client's error with every secret redacted (an engine may
    echo a request body in its error)."""
    text = str(exc.__cause__ or exc)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return type(exc)(f"{doing}: {' '.join(text.split())[:1000]}")


# ------------------------------------------------------------------ serve's address
def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to here (none when it does not resolve)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except OSError:
        return []


def is_private_host(host: str, resolve: Resolve) -> bool:
    """Whether ml-commons would call ``host`` private: an address (or one it resolves to) that
    is loopback, any-local, site-local / RFC 1918 or IPv4 link-local (ml-commons
    ``MLHttpClientFactory.hasPrivateIpAddress``, 2.15.0.0 to 2.19.6.0). The cluster's nodes
    resolve the name themselves; this machine's answer is the best guess here."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host)]
    return any(_is_private(a) for a in addresses)


def _is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_unspecified:
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return any(address in ipaddress.ip_network(n) for n in _PRIVATE_V4)
    return address in ipaddress.ip_network("fec0::/10")  # Java's isSiteLocalAddress


_PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")


# ------------------------------------------------------------------ the key
def first_api_key(path: str | Path) -> str:
    """The first key of a serve ``--api-key-file`` (serve's own rule, ``ApiKeys``), which
    the cluster will send serve."""
    try:
        return ApiKeys.load(path).first
    except ConfigurationError as exc:
        raise ConfigurationError(str(exc), option="serve_api_key_file") from None
