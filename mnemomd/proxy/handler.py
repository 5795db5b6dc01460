"""One proxied call, start to end: identify the agent, forward, relay, account.

The order matters for the promise "forwards every call unchanged": the gateway refuses a
call only for reasons of its own (no valid license, oversized body, no key, bad session
header, a contained agent, an agent it cannot know under ``fail_closed``) and then
gets out of the way; what the provider answers, the client gets.

When the agent lookup fails (database and KV store down) or gives up, the agent's last
known state decides (``AgentDirectory.last_known``); an agent never seen is forwarded as
an active ``observe`` agent under ``fail_open`` and refused with 503 ``gateway_unavailable``
under ``fail_closed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from mnemomd.agents.identity import (
    SESSION_HEADER,
    Agent,
    AgentDirectory,
    agent_hash,
    agent_id_candidates,
    default_session_id,
    is_valid_session_id,
)
from mnemomd.config import ProxyConfig
from mnemomd.enforcement.enforcer import combined_notice, containment_refusal
from mnemomd.enforcement.store import Nudge
from mnemomd.http import cors
from mnemomd.http.body import read_body
from mnemomd.http.server import GatewayRequest, error_payload, send_empty, send_json
from mnemomd.integrity.engine import AnalysisOutcome
from mnemomd.integrity.pipeline import (
    CheckResult,
    ResponsePlan,
    Unverifiable,
    aip_headers,
    refusal_payload,
)
from mnemomd.ops.dependency import DependencyState, log_failure
from mnemomd.ops.labels import LabelCache
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.policy import Evaluation
from mnemomd.providers import PROVIDERS, ProviderRegistry
from mnemomd.providers.base import Extraction, Provider, RequestInfo, is_usable_key
from mnemomd.proxy.headers import client_response_headers, upstream_request_headers
from mnemomd.proxy.hold import (
    FAILED_MESSAGE,
    HeldStreamRelay,
    HoldIntegrity,
    HoldSettings,
    PipelineGate,
    StreamFormat,
    within,
)
from mnemomd.proxy.policy import policy_refusal
from mnemomd.proxy.relay import RelayOutcome, ResponseCapture, StreamRelay
from mnemomd.proxy.routing import ProxyTarget, parse_proxy_target, upstream_url

log = Logger()

#: Largest upstream 400 body read to decide whether an injected parameter was refused.
ERROR_BODY_LIMIT = 1024 * 1024

SSE_CONTENT_TYPE = b"text/event-stream"
#: Longest wait for the agent record before its last known state (or the failure mode)
#: decides.
AGENT_LOOKUP_TIMEOUT = 2.0
#: Seconds a client refused for want of agent state is told to wait (``Retry-After``).
UNAVAILABLE_RETRY_AFTER = b"5"
#: Time allowed on top of AIP_ANALYSIS_TIMEOUT_MS for a held response's bookkeeping.
HOLD_GRACE_SECONDS = 2.0


@dataclass
class Call:
    """What the gateway knows about one call while it is in progress."""

    request: GatewayRequest
    target: ProxyTarget
    started: float
    agent: Agent | None = None
    session_id: str = ""
    status: int = 0
    streaming: bool = False
    overhead_ms: float = 0.0
    timed_out: bool = False
    info: RequestInfo | None = None
    #: The client's own body when the gateway sent a rewritten one.
    original_body: bytes | None = None
    #: Pending nudges whose notice this call carries.
    nudges: list[Nudge] = field(default_factory=list)
    #: The held body was answered before it ended (at the hold cap): nothing left to check.
    answered_early: bool = False
    #: ``X-Policy-Verdict`` while a tool policy is active for the agent.
    policy_verdict: bytes | None = None
    extra: dict[str, object] = field(default_factory=dict)


def is_streaming(headers: Headers) -> bool:
    """Streaming is what upstream says it is: an SSE content type."""
    value = (headers.getRawHeaders(b"content-type") or [b""])[0]
    return value.split(b";")[0].strip().lower() == SSE_CONTENT_TYPE


def has_body(headers: Headers) -> bool:
    return headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")


# -- what the proxy needs from its collaborators ----------------------------------------


class Upstream(Protocol):
    """Sends a call to its provider (``proxy.relay.UpstreamClient``)."""

    def request(self, method: bytes, url: bytes, headers: Headers,
                body: bytes | None) -> Deferred[IResponse]: ...


class TrafficGate(Protocol):
    """Whether calls may be forwarded at all (``cloud.license.LicenseState``)."""

    def allows_traffic(self) -> bool: ...


class NudgeDelivery(Protocol):
    """The pending nudges a call carries, and their delivery (``enforcement.Enforcement``)."""

    def take_nudges(self, agent: Agent) -> Deferred[list[Nudge]]: ...

    def delivered(self, agent: Agent, nudges: list[Nudge]) -> Deferred[int]: ...


class CallIntegrity(HoldIntegrity, Protocol):
    """The integrity steps of a call (``integrity.pipeline.IntegrityPipeline``)."""

    def prepare(self, provider: Provider, agent: Agent | None, path: bytes, query: bytes,
                body: bytes | None, notice: str | None = None,
                ) -> Deferred[tuple[bytes | None, RequestInfo, bool]]: ...

    def plan(self, agent: Agent | None, info: RequestInfo | None, status: int,
             streaming: bool) -> ResponsePlan: ...

    def analyse(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
                content_type: str, content_encoding: str | None, body: bytes,
                truncated: bool) -> Deferred[CheckResult]: ...

    def tools_called(self, agent: Agent, extraction: Extraction) -> None: ...

    def check(self, provider: Provider, agent: Agent, session_id: str, info: RequestInfo,
              extraction: Extraction) -> Deferred[CheckResult]: ...

    def trace(self, agent: Agent, session_id: str, provider: str, info: RequestInfo,
              extraction: Extraction, verdict: str,
              outcome: AnalysisOutcome | Unverifiable | None) -> Deferred[None]: ...


class PolicyCheck(Protocol):
    """Tool policies before forwarding (``proxy.policy.PolicyStep``)."""

    def check(self, agent: Agent, provider: Provider, info: RequestInfo | None,
              body: bytes | None) -> Deferred[Evaluation | None]: ...


class ProxyHandler:
    """The proxy: what the front door hands the paths of its providers (``/anthropic``,
    ``/openai``, ``/gemini``, and any other the registry holds) and ``/agent/{name}/…`` to."""

    def __init__(self, config: ProxyConfig, clock: IReactorTime, client: Upstream,
                 agents: AgentDirectory, metrics: GatewayMetrics,
                 integrity: CallIntegrity, enforcement: NudgeDelivery,
                 license_state: TrafficGate | None = None, *, analysis_timeout: float,
                 log_level: str, failure_mode: str,
                 providers: ProviderRegistry = PROVIDERS,
                 outages: Sequence[DependencyState] = (),
                 policies: PolicyCheck | None = None) -> None:
        """``analysis_timeout`` (seconds) bounds how long a held response waits for its
        verdict, and then ``failure_mode`` (``AIP_FAILURE_MODE``) decides; ``log_level``
        says whether access lines are worth formatting. ``providers`` is every provider
        the proxy routes to and looks up (the daemon's registry unless a build adds one);
        ``outages`` the storage dependencies whose known outage errors their trackers
        log, so a call that meets one logs no traceback of its own."""
        self._providers = providers
        self._policies = policies
        self._outages = outages
        self._failure_mode = failure_mode
        self._license = license_state
        self._integrity = integrity
        self._enforcement = enforcement
        self._config = config
        self._hold_timeout = analysis_timeout + HOLD_GRACE_SECONDS
        # Formatting an access line costs as much as a large share of the proxying;
        # skip building it when the level would drop it anyway.
        self._log_access = log_level in ("debug", "info")
        self._requests = LabelCache(metrics.requests)
        self._duration = LabelCache(metrics.request_duration)
        self._ttfb = LabelCache(metrics.upstream_ttfb)
        self._clock = clock
        self._client = client
        self._agents = agents
        self._metrics = metrics

    def target(self, path: bytes, query: bytes) -> ProxyTarget | None:
        """The proxy route a checked path names, or None when it names none."""
        return parse_proxy_target(path, query, self._providers)

    def route(self, path: bytes,
              query: bytes) -> Callable[[GatewayRequest], Deferred[None]] | None:
        """For the front door: the handler of a path that is a proxy route, else None."""
        target = self.target(path, query)
        if target is None:
            return None
        return lambda request: self.handle(request, target)

    def handle(self, request: GatewayRequest, target: ProxyTarget) -> Deferred[None]:
        """Handle one call; the Deferred fires when all work for it is over."""
        call = Call(request=request, target=target, started=request.received_at)
        done: Deferred[None] = Deferred()
        origin = request.requestHeaders.getRawHeaders(b"origin", [None])[0]
        allowed = self._config.cors_allowed_origins

        if request.method == b"OPTIONS":
            requested = request.requestHeaders.getRawHeaders(
                b"access-control-request-headers", [None])[0]
            send_empty(request, 204, cors.preflight_headers(origin, requested, allowed))
            self._account(call, 204)
            done.callback(None)
            return done

        refusal = self._refusal(request, target)
        if refusal is not None:
            status, payload = refusal
            send_json(request, status, payload, cors.response_headers(origin, allowed))
            self._account(call, status)
            done.callback(None)
            return done

        provider = self._providers[target.provider]
        key = provider.find_api_key(request.requestHeaders, target.query)
        assert key is not None  # checked by _refusal
        hash_ = agent_hash(key, target.agent_name)
        # The key alone identifies every agent it carries: key-scoped containment.
        key_hash = hash_ if target.agent_name is None else agent_hash(key)
        del key
        session = request.requestHeaders.getRawHeaders(SESSION_HEADER, [None])[0]
        call.session_id = (session.decode("ascii") if session is not None else
                           default_session_id(hash_, int(self._clock.seconds() * 1000)))

        def fallback_agent(failure: Failure) -> Agent | None:
            # The directory logged why (a storage outage is logged once, by its tracker).
            log.debug("Agent lookup failed ({reason})",
                      reason=failure.getErrorMessage() or failure.type.__name__,
                      request_id=request.request_id)
            return lookup_fallback(self._agents.last_known(hash_, target.agent_name,
                                                           key_hash),
                                   self._failure_mode, hash_, target.agent_name, key_hash)

        d = self._agents.resolve(hash_, target.agent_name, key_hash)
        if not d.called:
            d.addTimeout(AGENT_LOOKUP_TIMEOUT, self._clock)
        d.addErrback(fallback_agent)
        d.addCallback(self._decided, call)
        d.addBoth(lambda _: done.callback(None))
        return done

    def _refusal(self, request: GatewayRequest,
                 target: ProxyTarget) -> tuple[int, dict[str, object]] | None:
        """The gateway's own reasons to answer without forwarding, if any."""
        if self._license is not None and not self._license.allows_traffic():
            return 403, error_payload("License invalid or expired", "license_error")
        if request.content.too_large:
            return 413, error_payload(
                f"Request body exceeds {request.content.limit} bytes", "request_too_large")
        provider = self._providers[target.provider]
        key = provider.find_api_key(request.requestHeaders, target.query)
        if key is None:
            return 401, error_payload(f"Missing {provider.key_header}",
                                      "authentication_error")
        if not is_usable_key(key):
            return 400, error_payload(
                f"{provider.key_header} must be printable ASCII", "invalid_request_error")
        session = request.requestHeaders.getRawHeaders(SESSION_HEADER, [None])[0]
        if session is not None and not is_valid_session_id(session.decode("latin-1")):
            return 400, error_payload(
                "x-mnemom-session must be 1-128 characters of A-Z a-z 0-9 . _ : -",
                "invalid_request_error")
        return None

    def _decided(self, agent: Agent | None, call: Call) -> Deferred[Any] | None:
        """Forward as ``agent``, or refuse when no agent could be decided on."""
        if agent is not None:
            return self._forward(agent, call)
        request = call.request
        origin = request.requestHeaders.getRawHeaders(b"origin", [None])[0]
        send_json(request, 503, error_payload(
            "The gateway cannot reach its storage and does not know this agent; "
            "AIP_FAILURE_MODE=fail_closed refuses it until storage is back",
            "gateway_unavailable"),
            [(b"retry-after", UNAVAILABLE_RETRY_AFTER)]
            + cors.response_headers(origin, self._config.cors_allowed_origins))
        self._account(call, 503)
        return None

    @inlineCallbacks
    def _forward(self, agent: Agent, call: Call) -> Any:
        call.agent = agent
        request = call.request
        refusal = containment_refusal(agent)
        if refusal is not None:
            # Nothing is forwarded for a contained agent, on any replica.
            origin = request.requestHeaders.getRawHeaders(b"origin", [None])[0]
            send_json(request, 403, refusal,
                      cors.response_headers(origin, self._config.cors_allowed_origins))
            self._account(call, 403)
            return None
        body = request.content.getvalue() if has_body(request.requestHeaders) else None
        provider = self._providers[call.target.provider]
        try:
            nudges = yield self._enforcement.take_nudges(agent)
        except Exception:
            log_failure(log, "Pending nudges could not be read", Failure(), self._outages,
                        request_id=request.request_id)
            nudges = []
        notice = combined_notice(nudges) if nudges else None
        try:
            prepared = yield self._integrity.prepare(provider, agent, call.target.rest,
                                                     call.target.query, body, notice)
        except Exception:
            log.failure("Request preparation failed; forwarding unchanged",
                        request_id=request.request_id)
            prepared = (body, None, False)
        sent_body, info, nudged = prepared
        if self._policies is not None:
            try:
                evaluation = yield self._policies.check(agent, provider, info, body)
            except Exception:
                log.failure("Tool policy step failed", request_id=request.request_id)
                evaluation = None
            if evaluation is not None:
                call.policy_verdict = evaluation.shown.encode()
                if evaluation.blocked:
                    # Refused before anything reaches the provider (SPEC: tool policies).
                    send_json(request, 403, policy_refusal(evaluation),
                              self._gateway_headers(call))
                    self._account(call, 403)
                    call.extra["refused"] = "policy_violation"
                    return None
        if nudged:
            call.nudges = nudges
        yield self._send((sent_body, info), call, body)
        return None

    def _send(self, prepared: tuple[bytes | None, RequestInfo | None],
              call: Call, client_body: bytes | None) -> Deferred[None]:
        body, call.info = prepared
        call.original_body = client_body if body is not client_body else None
        request = call.request
        target = call.target
        headers = upstream_request_headers(request.requestHeaders)
        base_url = self._config.upstream_base_url(self._providers[target.provider])
        url = upstream_url(base_url, target)

        sent_at = self._clock.seconds()
        call.overhead_ms = (sent_at - call.started) * 1000
        d = self._client.request(request.method, url, headers, body)

        def expire() -> None:
            call.timed_out = True
            d.cancel()

        timer = self._clock.callLater(self._config.upstream_timeout, expire)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer)
        d.addCallbacks(self._relay, self._upstream_failed, callbackArgs=(call, sent_at),
                       errbackArgs=(call,))
        return d

    def _relay(self, response: IResponse, call: Call, sent_at: float) -> Deferred[None]:
        provider = call.target.provider
        self._ttfb(provider).observe(self._clock.seconds() - sent_at)
        if call.nudges and call.agent is not None and response.code != 400:
            # Delivered: the provider has answered a request that carried the notice.
            self._enforcement.delivered(call.agent, call.nudges).addErrback(
                lambda f: log_failure(log, "Could not mark nudges delivered", f,
                                      self._outages))
        if response.code == 400 and call.original_body is not None:
            return self._check_injection_refused(response, call)
        request = call.request
        call.status = response.code
        call.streaming = is_streaming(response.headers)
        plan = self._integrity.plan(call.agent, call.info, response.code, call.streaming)
        if plan.hold_stream and response.headers.hasHeader(b"content-encoding"):
            # Encoded events cannot be framed: held whole, like a non-streaming body.
            plan = ResponsePlan(True, True, plan.early_verdict)
        enforcement = call.agent.enforcement_mode if call.agent else None
        early = aip_headers(None, plan.early_verdict, enforcement)
        capture_limit = self._config.stream_capture_bytes if plan.analyse else 0
        capture = ResponseCapture(capture_limit)
        if plan.hold_stream:
            return self._relay_held_stream(call, response, plan, early, capture)
        if not plan.hold:
            self._write_head(call, response, early)
        relay = StreamRelay(request, self._clock, self._config.stream_idle_timeout,
                            capture, request.request_id,
                            hold_limit=self._config.aip_hold_buffer_bytes if plan.hold else None,
                            on_hold_full=lambda: self._hold_full(call, response, relay))
        response.deliverBody(relay)
        return relay.done.addCallback(self._relayed, call, response, plan)

    def _relay_held_stream(self, call: Call, response: IResponse, plan: ResponsePlan,
                           early: list[tuple[bytes, bytes]],
                           capture: ResponseCapture) -> Deferred[None]:
        """Enforce mode, an event stream: relayed to the end of its reasoning, held there
        for the verdict (``proxy.hold``). The head goes out at once, without a length: the
        body may end differently from upstream's."""
        assert call.agent is not None and call.info is not None
        request = call.request
        provider = self._providers[call.target.provider]
        self._write_head(call, response, early, keep_length=False)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        gate = PipelineGate(self._integrity, provider, call.agent, call.session_id, call.info,
                            content_type.decode("latin-1"), self._failure_mode)
        settings = HoldSettings(
            buffer_bytes=self._config.aip_hold_buffer_bytes,
            keepalive_seconds=self._config.aip_hold_keepalive_seconds,
            timeout_seconds=self._hold_timeout)
        relay = HeldStreamRelay(request, self._clock, self._config.stream_idle_timeout,
                                capture, request.request_id,
                                StreamFormat.of(provider, call.info), gate, settings)
        response.deliverBody(relay)
        return relay.done.addCallback(self._held_stream_relayed, call, response, gate, relay)

    def _held_stream_relayed(self, outcome: RelayOutcome, call: Call, response: IResponse,
                             gate: PipelineGate, relay: HeldStreamRelay) -> Deferred[Any] | None:
        """The held stream is over; what is left is off the response path: a check of
        reasoning that came only after the hold point (it can only nudge) and the trace."""
        call.extra["bytes_sent"] = outcome.bytes_sent
        call.extra["hold"] = "refused" if relay.error is not None else (
            "released" if gate.check is not None else "none")
        if relay.error is not None:
            call.extra["refused"] = relay.error.type
        if outcome.ending not in ("complete",):
            call.extra["reason"] = outcome.ending
        self._account(call, call.status)
        if outcome.ending not in ("complete", "client_gone"):
            return None
        return self._after_held_stream(call, response, gate, outcome)

    @inlineCallbacks
    def _after_held_stream(self, call: Call, response: IResponse, gate: PipelineGate,
                           outcome: RelayOutcome) -> Any:
        assert call.agent is not None and call.info is not None
        provider = self._providers[call.target.provider]
        yield gate.settled()  # a check still running (the hold timed out) is waited for
        if gate.output_analysed:
            return None  # analysed, recorded and traced with the whole output
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        extraction = yield self._integrity.extract(
            provider, call.info, content_type.decode("latin-1"), None,
            outcome.capture.getvalue(), outcome.capture.truncated)
        if extraction is None:
            return None
        self._integrity.tools_called(call.agent, extraction)
        check = gate.check
        result: CheckResult
        if check is None or (check.without_reasoning is None and extraction.thinking
                             and extraction.thinking != gate.checked_thinking):
            # No hold point, or reasoning after it: checked now, it can only nudge.
            result = yield self._integrity.check(provider, call.agent, call.session_id,
                                                 call.info, extraction)
        else:
            result = (check.verdict, check.outcome)
        yield self._integrity.trace(call.agent, call.session_id, provider.name, call.info,
                                    extraction, *result)
        return None

    def _hold_full(self, call: Call, response: IResponse, relay: StreamRelay) -> None:
        """A held body reached the hold cap: the upstream is paused and what is held is
        analysed now (never released unanalysed); the verdict releases it, and the rest
        streams on, or refuses it."""
        call.answered_early = True
        d = within(self._analyse(call, response, relay.capture), self._hold_timeout,
                   self._clock, ("timeout", None))

        def answer(result: CheckResult) -> None:
            verdict, outcome = result
            refusal = self._held_refusal(verdict, outcome)
            headers = self._held_headers(verdict, outcome, refusal is not None)
            if refusal is None:
                relay.release_hold(lambda: self._write_head(call, response, headers))
                return
            call.status = 403
            relay.abandon()
            send_json(call.request, 403, refusal, self._gateway_headers(call) + headers)

        d.addCallback(answer)

    def _check_injection_refused(self, response: IResponse, call: Call) -> Deferred[None]:
        """A 400 to a body the gateway rewrote: if the rewrite was the reason, send the
        client's own body instead, so asking for reasoning never costs the client a call."""
        original, call.original_body = call.original_body, None
        # Bounded like every other body the gateway reads: an error answer is small, and an
        # upstream trickling one must not hold the call once its response timer is gone.
        d = read_body(response, ERROR_BODY_LIMIT, self._clock, self._config.stream_idle_timeout)

        def decide(error_body: bytes) -> Deferred[None] | None:
            if call.info is not None and self._providers.injection_rejected(call.info, 400,
                                                                            error_body):
                call.nudges = []  # the body resent is the client's own, without the notice
                log.info("Upstream refused the reasoning request; resending the call as sent",
                         request_id=call.request.request_id, provider=call.target.provider)
                return self._send((original, call.info), call, original)
            call.status = response.code
            call.streaming = False
            self._write_head(call, response, aip_headers(None, "skipped", None))
            call.request.responseHeaders.setRawHeaders(b"content-length",
                                                       [b"%d" % len(error_body)])
            call.request.write(error_body)
            call.request.finish()
            self._account(call, call.status)
            return None

        def broken(failure: Failure) -> None:
            log.warn("Upstream error body could not be read: {reason}",
                     reason=failure.getErrorMessage(), request_id=call.request.request_id)
            call.request.loseConnection()
            self._account(call, 502)

        return d.addCallbacks(decide, broken)

    def _write_head(self, call: Call, response: IResponse,
                    extra: list[tuple[bytes, bytes]], keep_length: bool = True) -> None:
        """Status and headers as upstream sent them, plus the gateway's own."""
        request = call.request
        request.setResponseCode(response.code, response.phrase or None)
        for name, values in client_response_headers(response.headers):
            request.responseHeaders.setRawHeaders(name, values)
        if keep_length and response.length is not UNKNOWN_LENGTH and request.method != b"HEAD" \
                and response.code not in NO_BODY_CODES:
            # Twisted's client consumes Content-Length; the body is relayed unchanged,
            # so the client gets the same framing the provider chose.
            request.responseHeaders.setRawHeaders(b"content-length",
                                                  [b"%d" % response.length])
        for name, value in self._gateway_headers(call) + extra:
            request.responseHeaders.setRawHeaders(name, [value])

    def _gateway_headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        assert call.agent is not None
        agent_id = call.agent.agent_id.encode()
        session = call.session_id.encode()
        headers = [
            (b"x-mnemom-agent", agent_id), (b"x-mnemom-session", session),
            (b"x-smoltbot-agent", agent_id), (b"x-smoltbot-session", session),
            (b"x-mnemom-overhead-ms", b"%.3f" % call.overhead_ms),
            (b"x-mnemom-request-id", call.request.request_id.encode()),
        ]
        if call.streaming:
            headers.append((b"x-accel-buffering", b"no"))
        if call.nudges:
            headers.append((b"x-aip-nudge-count", b"%d" % len(call.nudges)))
        if call.policy_verdict is not None:
            headers.append((b"x-policy-verdict", call.policy_verdict))
        origin = call.request.requestHeaders.getRawHeaders(b"origin", [None])[0]
        headers += cors.response_headers(origin, self._config.cors_allowed_origins)
        return headers

    def _relayed(self, outcome: RelayOutcome, call: Call, response: IResponse,
                 plan: ResponsePlan) -> Deferred[None] | None:
        call.extra["bytes_sent"] = outcome.bytes_sent
        if outcome.ending != "complete":
            call.extra["reason"] = outcome.ending
        analysable = plan.analyse and outcome.ending in ("complete", "client_gone") \
            and call.info is not None and call.agent is not None
        if call.answered_early:
            self._account(call, call.status)
            return None
        if outcome.held_body is None:
            self._account(call, call.status)
            if not analysable:
                return None
            # Off the response path: the client already has everything.
            return self._analyse(call, response, outcome.capture).addCallback(lambda _: None)
        if not analysable:
            self._answer_held(("skipped", None), call, response, outcome.held_body)
            return None
        analysis = self._analyse(call, response, outcome.capture)
        # The analyzer bounds the model call; this bounds everything around it too.
        d = within(analysis, self._hold_timeout, self._clock, ("timeout", None))
        d.addCallback(self._answer_held, call, response, outcome.held_body)
        return d.addCallback(lambda _: analysis)

    def _analyse(self, call: Call, response: IResponse,
                 capture: ResponseCapture) -> Deferred[CheckResult]:
        assert call.agent is not None and call.info is not None
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        encoding = (response.headers.getRawHeaders(b"content-encoding") or [None])[0]
        return self._integrity.analyse(
            self._providers[call.target.provider], call.agent, call.session_id, call.info,
            content_type.decode("latin-1"), encoding.decode("latin-1") if encoding else None,
            capture.getvalue(), capture.truncated)

    def _held_refusal(self, verdict: str,
                      outcome: AnalysisOutcome | Unverifiable | None) -> dict[str, Any] | None:
        """The 403 body for a held response, or None to release it: a boundary violation
        (synthetic ones under ``fail_closed`` included) and a response refused unanalysed
        (``refusal_payload``), and no verdict at all (timeout, pipeline error) under
        ``fail_closed``."""
        refusal = refusal_payload(verdict, outcome)
        if refusal is None and verdict in ("timeout", "error") \
                and self._failure_mode == "fail_closed":
            refusal = error_payload(FAILED_MESSAGE, "integrity_violation", checkpoint_id=None,
                                    concerns=[], synthetic=True,
                                    reason="analysis_timeout" if verdict == "timeout"
                                    else "analysis_failed")
        return refusal

    @staticmethod
    def _held_headers(verdict: str, outcome: AnalysisOutcome | Unverifiable | None,
                      refused: bool) -> list[tuple[bytes, bytes]]:
        """``X-AIP-*`` of a held response: refused unanalysed has no verdict (``skipped``);
        no verdict in time is ``error`` when released, a violation when refused."""
        checkpoint = outcome if isinstance(outcome, AnalysisOutcome) else None
        shown = verdict
        if isinstance(outcome, Unverifiable):
            shown = "skipped"
        elif verdict in ("timeout", "error"):
            shown = "boundary_violation" if refused else "error"
        return aip_headers(checkpoint, shown, "enforce")

    def _answer_held(self, result: CheckResult, call: Call, response: IResponse,
                     body: bytes) -> None:
        """The verdict is in: send the held response, or refuse it (enforce mode)."""
        verdict, outcome = result
        request = call.request
        if request._disconnected:
            self._account(call, call.status)
            return
        refusal = self._held_refusal(verdict, outcome)
        headers = self._held_headers(verdict, outcome, refusal is not None)
        if refusal is not None:
            call.status = 403
            send_json(request, 403, refusal, self._gateway_headers(call) + headers)
        else:
            self._write_head(call, response, headers)
            request.write(body)
            request.finish()
        self._account(call, call.status)

    def _upstream_failed(self, failure: Failure, call: Call) -> None:
        call.nudges = []  # never reached the model: stays pending for the next call
        request = call.request
        if call.timed_out:
            status = 504
            payload = error_payload(
                f"Upstream sent no response within {self._config.upstream_timeout:g} s",
                "upstream_timeout")
        else:
            status = 502
            payload = error_payload(f"Upstream unreachable: {describe_failure(failure)}",
                                    "upstream_error")
        log.warn("Upstream call failed: {reason}", reason=payload["error"],
                 request_id=request.request_id, provider=call.target.provider)
        headers = self._gateway_headers(call)
        send_json(request, status, payload, headers)
        self._account(call, status)

    def _account(self, call: Call, status: int) -> None:
        """Metrics and the access log line, once per call."""
        provider = call.target.provider
        duration = self._clock.seconds() - call.started
        self._requests(provider, status).inc()
        self._duration(provider).observe(duration)
        if not self._log_access:
            return
        path = call.target.rest.decode("latin-1")
        log.info("{method} /{provider}{path} {status}",
                 method=call.request.method.decode("latin-1"), provider=provider,
                 path=path, status=status, request_id=call.request.request_id,
                 agent_id=call.agent.agent_id if call.agent else None,
                 duration_ms=round(duration * 1000, 3),
                 overhead_ms=round(call.overhead_ms, 3) if call.agent else None,
                 streaming=call.streaming, **call.extra)


def lookup_fallback(known: Agent | None, failure_mode: str, hash_: str, name: str | None,
                    key_hash: str | None) -> Agent | None:
    """The agent a call is decided on when its lookup failed: the last known one; for an
    agent never seen, an active ``observe`` agent derived from the key under
    ``fail_open``, and none (refused) under ``fail_closed``."""
    if known is not None:
        return known
    if failure_mode == "fail_closed":
        return None
    return Agent(agent_hash=hash_, agent_id=agent_id_candidates(hash_)[0], name=name,
                 key_hash=key_hash)


def describe_failure(failure: Failure) -> str:
    """A short, secret-free reason for a failed upstream call."""
    reasons = getattr(failure.value, "reasons", None)
    inner = reasons[0] if reasons else failure
    text = inner.getErrorMessage() or inner.type.__name__
    return text.strip().rstrip(".")[:200]
