"""The web console in a real browser, against a real daemon (issue 21).

The daemon runs as a subprocess, pointed at the fake upstream and at a fake analysis
model that returns verdicts as each test scripts them; agents are made by the official
SDKs. Headless Chromium (``console_browser``) drives the console as an operator would,
and fails any request to another origin than the daemon's.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from mnemomd import __version__
from tests.e2e.api import CREDENTIALS, INTERNAL_KEY, ApiDaemon, api_call, make_jwt
from tests.e2e.conftest import provider_env
from tests.e2e.console_browser import NARROW, SCREENSHOTS, chromium, tab
from tests.e2e.daemon import Daemon, start_daemon
from tests.fakes.idp import AUDIENCE, FakeIdentityProvider
from tests.fakes.process import analysis_control, wait_until
from tests.fakes.rawhttp import raw_request
from tests.fakes.recorder import Recorder
from tests.integrity.fakes import VERDICT_CLEAR

DOCS = Path(__file__).resolve().parents[2] / "docs"
ADMIN_NAME = "olivia.ops@example"
ADMIN = make_jwt(role="admin", sub=ADMIN_NAME)
VIEWER = make_jwt(role="viewer", sub="victor.viewer@example")
OWNER = INTERNAL_KEY
EVIDENCE = "<img src=x onerror=alert(1)>"
SUMMARY = "The agent obeys text from a web page: <script>alert(2)</script> was in it."
HOSTILE = {
    "verdict": "boundary_violation",
    "concerns": [{"category": "prompt_injection", "severity": "critical",
                  "description": "Follows instructions injected by a fetched page.",
                  "evidence": EVIDENCE, "relevant_card_field": None,
                  "relevant_conscience_value": None}],
    "reasoning_summary": SUMMARY,
    "conscience_context": {"values_checked": [], "conflicts": [], "supports": [],
                           "considerations": [], "consultation_depth": "deep"},
}
DESCRIPTION = "ops pager <b onmouseover=alert(3)>night shift</b>"
REVIEW = "valid"  # the fake's default verdict: review_needed, with one concern


@dataclass
class Seeded:
    daemon: Daemon
    #: agent name -> agent id
    agents: dict[str, str]
    #: agent name -> the verdicts its calls were given, oldest first
    verdicts: dict[str, list[str]]
    analysis_url: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.daemon.base_url

    def api(self, method: str, path: str, body: Any = None, token: str = OWNER) -> Any:
        return api_call(self.url, method, path, body, token=token)


def anthropic_call(base: str, name: str, key: str) -> Any:
    client = anthropic.Anthropic(base_url=f"{base}/agent/{name}/anthropic", api_key=key,
                                 max_retries=0)
    return client.messages.create(model="claude-x", max_tokens=2048,
                                  messages=[{"role": "user", "content": "hello"}])


def openai_call(base: str, name: str, key: str) -> Any:
    client = openai.OpenAI(base_url=f"{base}/agent/{name}/openai/v1", api_key=key,
                           max_retries=0)
    return client.responses.create(model="o4-mini", input="hello")


def gemini_call(base: str, name: str, key: str) -> Any:
    client = genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=f"{base}/agent/{name}/gemini"))
    return client.models.generate_content(model="gemini-2.5-pro", contents="hello")


def agent_id(base: str, name: str) -> str:
    agents = api_call(base, "GET", "/v1/agents?limit=500").body["items"]
    return next(a["agent_id"] for a in agents if a["name"] == name)


def analysed_call(seeded: Seeded, call: Any, name: str, key: str, verdict: Any) -> str:
    """One SDK call whose analysis gives ``verdict``; waits for its checkpoint."""
    analysis_control(seeded.analysis_url, "POST", "script",
                     {"actions": [verdict], "default": REVIEW})
    call(seeded.url, name, key)
    ident = agent_id(seeded.url, name)
    expected = len(seeded.verdicts.setdefault(name, [])) + 1
    wait_until(lambda: seeded.api("GET", f"/v1/agents/{ident}/checkpoints?limit=1")
               .body["total"] >= expected, timeout=20, interval=0.05,
               what=f"checkpoint {expected} of {name}")
    seeded.verdicts[name].append("review_needed" if verdict == REVIEW else verdict["verdict"])
    seeded.agents[name] = ident
    return ident


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, upstream_url: str,
           analysis_url: str) -> Iterator[Seeded]:
    """A daemon whose agents were made by the three SDKs and analysed: support-bot
    (Anthropic: clear, clear, review), research-bot (OpenAI: clear, a hostile violation)
    and ops-bot (Gemini: clear)."""
    analysis_control(analysis_url, "POST", "release")
    home = tmp_path_factory.mktemp("console")
    daemon = start_daemon(home, provider_env(upstream_url)
                          | CREDENTIALS | {"ANALYSIS_BASE_URL": analysis_url,
                                           "ANTHROPIC_API_KEY": "sk-analysis-key",
                                           "AIP_MIN_EVIDENCE_TOKENS": "1"})
    seeded = Seeded(daemon, {}, {}, analysis_url, home / "data")
    try:
        for verdict in (VERDICT_CLEAR, VERDICT_CLEAR, REVIEW):
            analysed_call(seeded, anthropic_call, "support-bot", "sk-ant-support", verdict)
        for verdict in (VERDICT_CLEAR, HOSTILE):
            analysed_call(seeded, openai_call, "research-bot", "sk-oai-research", verdict)
        analysed_call(seeded, gemini_call, "ops-bot", "g-ops", VERDICT_CLEAR)
        yield seeded
    finally:
        analysis_control(analysis_url, "POST", "script", {"actions": [], "default": REVIEW})
        daemon.stop(10)


def ratio_text(verdicts: list[str]) -> str:
    return f"{verdicts.count('clear') / len(verdicts) * 100:.1f}%"


def assert_clean(watched: Any) -> None:
    """Nothing ran that should not have, and nothing was asked of another host."""
    assert watched.dialogs == []
    assert watched.page_errors == []
    assert watched.refused == []


# -- done when 1: the agents, an agent, pausing, roles ----------------------------------


def test_agent_list_shows_every_agent_with_its_integrity_ratio(seeded, browser):
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        page = watched.page
        page.wait_for_selector("table.agents tbody tr")
        for name, verdicts in seeded.verdicts.items():
            row = page.locator(f"tr[data-agent-id='{seeded.agents[name]}']")
            score = seeded.api("GET", f"/v1/agents/{seeded.agents[name]}/integrity").body
            assert row.locator("[data-col=ratio]").inner_text().startswith(
                ratio_text(verdicts)), name
            assert f"{score['integrity_ratio'] * 100:.1f}%" == ratio_text(verdicts)
            assert row.locator("svg.spark rect").count() == len(verdicts), name
        violating = page.locator(f"tr[data-agent-id='{seeded.agents['research-bot']}']")
        assert "violating" in violating.get_attribute("class")
        assert "violation" in violating.locator("[data-col=verdict]").inner_text()
        calm = page.locator(f"tr[data-agent-id='{seeded.agents['ops-bot']}']")
        assert calm.get_attribute("class") is None
        assert "clear" in calm.locator("[data-col=verdict]").inner_text()
        assert page.locator("tbody tr").count() >= 3
        api_paths = [url.split("/v1/", 1)[1] for url in watched.requests if "/v1/" in url]
        assert [p for p in api_paths if p.startswith("agents")] == \
            ["agents?limit=500&include=integrity"]  # one request for the whole list
        page.fill("#agent-filter", "ops")
        assert page.locator("tbody tr").count() == 1
        page.fill("#agent-filter", "")
        page.select_option("#agent-sort", "ratio")
        first = page.locator("tbody tr").first.get_attribute("data-agent-id")
        assert first == seeded.agents["research-bot"]
        watched.screenshot("agents")
        assert_clean(watched)


def test_agent_page_shows_checkpoints_with_concerns_and_draws_its_chart(seeded, browser):
    ident = seeded.agents["support-bot"]
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        watched.go(f"#/agents/{ident}", "svg.chart")
        page = watched.page
        chart = page.locator("svg.chart")
        assert chart.get_attribute("data-points") == "3"
        assert chart.locator(".point").count() == 3
        assert [chart.locator(".point").nth(i).get_attribute("data-verdict")
                for i in range(3)] == seeded.verdicts["support-bot"]
        assert page.locator("article.checkpoint").count() == 3
        review = page.locator("article.checkpoint").first  # newest first: the review
        assert "review needed" in review.inner_text()
        assert review.locator(".concern .description").inner_text() == \
            "Plans to skip a requested safety check."
        assert "Evidence: " + "E" * 50 in review.locator(".evidence").inner_text()
        assert page.locator("[data-testid=ratio]").inner_text().startswith("66.7%")
        watched.screenshot("agent")
        assert_clean(watched)


def test_pausing_from_the_console_refuses_the_agents_next_call(seeded, browser):
    key = f"sk-ant-{uuid.uuid4().hex[:8]}"
    ident = analysed_call(seeded, anthropic_call, "pause-me", key, VERDICT_CLEAR)
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        watched.go(f"#/agents/{ident}", "button[data-action=pause]")
        page = watched.page
        page.fill("#reason", "odd tool calls at night")
        page.click("button[data-action=pause]")
        page.wait_for_selector("[data-testid=containment]:has-text('paused')")
        assert page.locator(".actor").first.inner_text() == ADMIN_NAME
        assert_clean(watched)
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic_call(seeded.url, "pause-me", key)
    log = seeded.api("GET", f"/v1/agents/{ident}/containment").body["log"]
    assert [(e["action"], e["actor"], e["reason"]) for e in log] == \
        [("pause", ADMIN_NAME, "odd tool calls at night")]


def test_mode_and_settings_are_changed_from_the_console(seeded, browser):
    ident = analysed_call(seeded, anthropic_call, "mode-bot", "sk-ant-mode", VERDICT_CLEAR)
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        watched.go(f"#/agents/{ident}", "#mode")
        page = watched.page
        page.select_option("#mode", "enforce")
        page.click("text=Save mode")
        page.wait_for_selector("[data-testid=mode]:has-text('enforce')")
        page.uncheck("#aap")
        page.select_option("#nudge-strategy", "off")
        page.click("text=Save settings")
        page.wait_for_selector(".message .ok:has-text('Settings saved.')")
        assert_clean(watched)
    settings = seeded.api("GET", f"/v1/agents/{ident}/settings").body
    assert (settings["aap_enabled"], settings["nudge_strategy"], settings["aip_enabled"]) == \
        (False, "off", True)
    assert seeded.api("GET", f"/v1/agents/{ident}/enforcement").body["mode"] == "enforce"


def test_killing_asks_for_confirmation_first(seeded, browser):
    key = f"sk-ant-{uuid.uuid4().hex[:8]}"
    ident = analysed_call(seeded, anthropic_call, "kill-me", key, VERDICT_CLEAR)
    with tab(browser, seeded.url) as watched:
        watched.sign_in(OWNER)
        watched.go(f"#/agents/{ident}", "button[data-action=kill]")
        page = watched.page
        page.click("button[data-action=kill]")
        page.wait_for_selector("button[data-action=confirm-kill]")
        assert seeded.api("GET", f"/v1/agents/{ident}").body["containment_status"] == "active"
        page.click("button[data-action=confirm-kill]")
        page.wait_for_selector("[data-testid=containment]:has-text('killed')")
        assert_clean(watched)
    assert seeded.api("GET", f"/v1/agents/{ident}").body["containment_status"] == "killed"
    log = seeded.api("GET", f"/v1/agents/{ident}/containment").body["log"]
    assert [(e["action"], e["actor"]) for e in log] == [("kill", "internal-api-key")]


def test_a_viewer_sees_no_controls_and_a_forged_control_request_is_refused(seeded, browser):
    ident = seeded.agents["ops-bot"]
    with tab(browser, seeded.url) as watched:
        watched.sign_in(VIEWER)
        watched.go(f"#/agents/{ident}", "svg.chart")
        page = watched.page
        assert page.locator("[data-testid=who]").inner_text().startswith(
            "victor.viewer@example (viewer)")
        assert page.locator("main button").count() == 0
        assert page.locator("main form, main select, #reason").count() == 0
        watched.go("#/webhooks", "main h1:has-text('Webhooks')")
        assert page.locator("main button").count() == 0
        status, body = page.evaluate("""async (id) => {
            const token = sessionStorage.getItem('mnemomd.console.token');
            const r = await fetch(`/v1/agents/${id}/containment/pause`, {method: 'POST',
                headers: {authorization: `Bearer ${token}`, 'content-type': 'application/json'},
                body: '{"reason": "forged"}'});
            return [r.status, await r.json()];
        }""", ident)
        assert (status, body["type"]) == (403, "permission_error")
        assert watched.dialogs == [] and watched.page_errors == [] and watched.refused == []
    assert seeded.api("GET", f"/v1/agents/{ident}").body["containment_status"] == "active"


def test_agent_page_shows_traces_drift_alerts_and_the_timeline(seeded, browser, receiver):
    ident = analysed_call(seeded, anthropic_call, "observed-bot", "sk-ant-observed",
                          VERDICT_CLEAR)
    ids = ApiDaemon(seeded.daemon, seeded.data_dir, receiver).seed(ident)
    with tab(browser, seeded.url) as watched:
        watched.sign_in(VIEWER)
        watched.go(f"#/agents/{ident}", "svg.chart")
        page = watched.page
        traces = page.locator("section[aria-label^='AP-traces']")
        assert "✓ verified" in traces.inner_text() and ids["trace_id"] in traces.inner_text()
        drift = page.locator("section[aria-label^='Drift alerts']")
        assert "medium" in drift.inner_text() and "sustained_checks" in drift.inner_text()
        timeline = page.locator("section[aria-label=Timeline]").inner_text()
        for kind in ("checkpoint", "trace", "nudge"):
            assert kind in timeline, kind
        article = page.locator(f"article[data-checkpoint-id='{ids['checkpoint_id']}']")
        assert "Plans to hide a failed tool call from the user" in article.inner_text()
        assert page.locator("svg.chart").get_attribute("data-points") == "2"
        assert_clean(watched)


# -- done when 2: hostile text, headers ------------------------------------------------


def test_hostile_evidence_and_summary_render_as_text_and_run_nothing(seeded, browser):
    ident = seeded.agents["research-bot"]
    checkpoints = seeded.api("GET", f"/v1/agents/{ident}/checkpoints").body["items"]
    hostile = next(c for c in checkpoints if c["verdict"] == "boundary_violation")
    assert hostile["concerns"][0]["evidence"] == EVIDENCE  # stored as the model gave it
    assert hostile["reasoning_summary"] == SUMMARY
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        page = watched.page
        for view in (f"#/agents/{ident}", f"#/checkpoints/{hostile['id']}"):
            watched.go(view, f"article[data-checkpoint-id='{hostile['id']}']")
            article = page.locator(f"article[data-checkpoint-id='{hostile['id']}']")
            assert EVIDENCE in article.locator(".evidence").inner_text()
            assert SUMMARY in article.locator(".summary").inner_text()
            assert "violation" in article.locator(".verdict").inner_text()
            assert page.locator("main img, main script, main iframe").count() == 0
        assert watched.dialogs == []
        assert watched.page_errors == []
        assert watched.console_errors == []
        assert watched.refused == []
        assert not [url for url in watched.requests if url.endswith("/x")]


REFUSED_PATHS = ["/console/..%2fsetup.cfg", "/console/%2e%2e/setup.cfg",
                 "/console/%2E%2E/%2E%2E/etc/passwd", "/console/x%00.js",
                 "/console/..\\setup.cfg", "/console/%5c..%5csetup.cfg"]


def test_every_console_answer_carries_the_security_headers(seeded):
    def fetch(method: str, path: str, headers: dict[str, str] | None = None):
        with raw_request(seeded.url, method, path, headers=headers) as response:
            body = response.read_body() if method != "HEAD" and response.status != 304 \
                else b""
            return response.status, {k.lower(): v for k, v in response.headers}, body

    index = fetch("GET", "/console/")
    answers = {
        "index": index,
        "head": fetch("HEAD", "/console/app.js"),
        "module": fetch("GET", "/console/views/agent.js"),
        "style": fetch("GET", "/console/console.css"),
        "icon": fetch("GET", "/console/icon.svg"),
        "revalidated": fetch("GET", "/console/", {"if-none-match": index[1]["etag"]}),
        "missing": fetch("GET", "/console/nothing-here.js"),
        "post": fetch("POST", "/console/"),
        "redirect": fetch("GET", "/console"),
        **{path: fetch("GET", path) for path in REFUSED_PATHS},
    }
    for what, (_status, headers, _body) in answers.items():
        csp = headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, what
        assert "connect-src 'self';" in csp, what
        assert headers.get("x-content-type-options") == "nosniff", what
        assert headers.get("referrer-policy") == "no-referrer", what
        assert headers.get("x-frame-options") == "DENY", what
    assert [answers[k][0] for k in ("index", "head", "module", "style", "icon", "revalidated",
                                    "missing", "post", "redirect")] == \
        [200, 200, 200, 200, 200, 304, 404, 405, 301]
    assert answers["index"][1]["content-type"] == "text/html; charset=utf-8"
    assert answers["module"][1]["content-type"] == "text/javascript; charset=utf-8"
    assert answers["style"][1]["content-type"] == "text/css; charset=utf-8"
    assert answers["icon"][1]["content-type"] == "image/svg+xml"
    assert answers["index"][1]["cache-control"] == "no-cache"
    assert answers["post"][1]["allow"] == "GET, HEAD"
    assert answers["redirect"][1]["location"] == "/console/"
    for path in REFUSED_PATHS:
        status, _, body = answers[path]
        assert status in (400, 404) and b"[metadata]" not in body and b"root:" not in body, path


# -- done when 4: nothing but the daemon -----------------------------------------------


def test_the_console_works_with_every_other_host_unreachable(seeded, browser):
    ident = seeded.agents["research-bot"]
    with tab(browser, seeded.url) as watched:
        watched.sign_in(ADMIN)
        checkpoint = seeded.api("GET", f"/v1/agents/{ident}/checkpoints?limit=1").body[
            "items"][0]["id"]
        for view, ready in (("#/agents", "table.agents tbody tr"),
                            (f"#/agents/{ident}", "svg.chart"),
                            (f"#/checkpoints/{checkpoint}", "article.checkpoint"),
                            ("#/webhooks", "main h1:has-text('Webhooks')"),
                            ("#/deployment", "[data-testid=version]")):
            watched.go(view, ready)
        assert watched.refused == []
        assert len(watched.requests) > 10
        assert {re.match(r"https?://[^/]+", url).group(0) for url in watched.requests} == \
            {seeded.url}
        assert_clean(watched)


# -- the other views ---------------------------------------------------------------------


def test_a_certificate_is_downloaded_and_verified_from_its_checkpoint(seeded, browser):
    ident = seeded.agents["support-bot"]
    checkpoint = seeded.api("GET", f"/v1/agents/{ident}/checkpoints?limit=1").body[
        "items"][0]["id"]
    with tab(browser, seeded.url) as watched:
        watched.sign_in(VIEWER)
        watched.go(f"#/checkpoints/{checkpoint}", "a[download]")
        page = watched.page
        with page.expect_download() as download:
            page.click("a[download]")
        certificate = json.loads(Path(download.value.path()).read_text())
        assert certificate["type"] == "IntegrityCertificate"
        assert certificate["subject"]["checkpoint_id"] == checkpoint
        page.click("text=Verify against this gateway's keys")
        page.wait_for_selector("[data-testid=verification]")
        assert page.locator("[data-testid=verification]").inner_text().startswith(
            "✓ certificate valid")
        watched.screenshot("checkpoint")
        assert_clean(watched)


def test_webhooks_view_tests_and_redelivers(seeded, browser):
    receiver = Recorder()
    try:
        created = seeded.api("POST", "/v1/webhooks", {"url": receiver.url + "/hook",
                                                      "allow_http": True,
                                                      "description": DESCRIPTION})
        assert created.status == 201
        endpoint = created.body["id"]
        with tab(browser, seeded.url) as watched:
            watched.sign_in(ADMIN)
            watched.go("#/webhooks", f"[data-webhook-id='{endpoint}'] button")
            page = watched.page
            card = page.locator(f"[data-webhook-id='{endpoint}']")
            card.locator("text=Send test event").click()
            card.locator("tbody tr").first.wait_for()
            wait_until(lambda: len(receiver.requests) >= 1, timeout=15, what="test delivery")
            watched.go("#/agents", "table.agents")
            watched.go("#/webhooks", f"[data-webhook-id='{endpoint}'] .d-delivered")
            card.locator("text=Redeliver").first.click()
            wait_until(lambda: len(receiver.requests) >= 2, timeout=15, what="redelivery")
            card.locator("tbody tr").nth(1).wait_for()
            assert "webhook.test" in card.inner_text()
            assert DESCRIPTION in card.inner_text()
            assert page.locator("main b, main img").count() == 0
            watched.screenshot("webhooks")
            assert_clean(watched)
    finally:
        receiver.close()


def test_deployment_view_shows_readiness_version_license_and_rates(seeded, browser):
    with tab(browser, seeded.url) as watched:
        watched.sign_in(VIEWER)
        watched.go("#/deployment", "[data-testid=version]")
        page = watched.page
        assert page.locator("[data-testid=version]").inner_text() == __version__
        assert page.locator("[data-testid=build]").inner_text().startswith("source build · Python")
        assert page.locator("[data-testid=readiness]").inner_text().startswith("✓ ok")
        assert page.locator("[data-testid=license]").inner_text().startswith("unlicensed")
        assert "Proxied calls" in page.locator("table.figures").inner_text()
        # Traffic after the first sample: the next one, five seconds on, shows it as rates.
        for _ in range(3):
            analysis_control(seeded.analysis_url, "POST", "script",
                             {"actions": [], "default": VERDICT_CLEAR})
            anthropic_call(seeded.url, "busy-bot", "sk-ant-busy")
        calls = page.locator("table.figures tr", has_text="Proxied calls")
        calls.filter(has_text="/s").filter(has_not_text="0.00 /s").wait_for(timeout=20_000)
        figures = page.locator("table.figures").inner_text()
        assert re.search(r"Proxied calls\s+(0\.[1-9]\d|0\.0[1-9]|[1-9][\d.]*) /s", figures), figures
        assert re.search(r"Verdicts\s+[\d.]+ /min", figures), figures
        assert re.search(r"Request duration \(mean, to end of stream\)\s+[\d.]+ ms", figures)
        watched.screenshot("deployment")
        assert_clean(watched)


def test_the_metrics_parser_reads_the_prometheus_text_format(seeded, browser):
    """The deployment view's parser, run in the browser on the daemon's own /metrics."""
    with tab(browser, seeded.url) as watched:
        watched.open()
        watched.page.wait_for_selector("#token")
        parsed = watched.page.evaluate("""async () => {
            const m = await import('/console/views/deployment.js');
            const text = await (await fetch('/metrics')).text();
            const samples = m.parseMetrics(text);
            const odd = m.parseMetrics('# HELP x y\\nx_total{a="q\\\\"z",b="2"} 3.5\\nbad line\\n');
            return {figures: m.figures(samples), odd};
        }""")
        assert_clean(watched)
    calls = seeded.api("GET", "/v1/agents?limit=500").body["total"]
    assert parsed["figures"]["calls"] >= calls  # every agent was made by a proxied call
    assert parsed["figures"]["verdicts"] >= sum(len(v) for v in seeded.verdicts.values())
    assert parsed["odd"] == [{"name": "x_total", "labels": {"a": 'q\\"z', "b": "2"},
                              "value": 3.5}]


def test_narrow_screens_scroll_tables_not_the_page(seeded, browser):
    with tab(browser, seeded.url, viewport=NARROW) as watched:
        watched.sign_in(ADMIN)
        page = watched.page
        for view, ready in (("#/agents", "table.agents tbody tr"),
                            (f"#/agents/{seeded.agents['research-bot']}", "svg.chart")):
            watched.go(view, ready)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= NARROW["width"], view
        assert_clean(watched)


def test_the_console_is_usable_from_the_keyboard(seeded, browser):
    with tab(browser, seeded.url) as watched:
        watched.open()
        page = watched.page
        page.wait_for_selector("#token")

        def tab_to(selector: str, limit: int = 40) -> None:
            for _ in range(limit):
                page.keyboard.press("Tab")
                if page.evaluate("s => document.activeElement.matches(s)", selector):
                    return
            raise AssertionError(f"Tab never reached {selector}")

        tab_to("#token")
        page.keyboard.type(ADMIN)
        page.keyboard.press("Enter")
        page.wait_for_selector("table.agents tbody tr")
        target = seeded.agents["ops-bot"]
        tab_to(f"a[href='#/agents/{target}']")
        page.keyboard.press("Enter")
        page.wait_for_selector("svg.chart")
        assert page.evaluate("location.hash") == f"#/agents/{target}"
        page.evaluate("document.activeElement.blur()")
        tab_to("a.skip")
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        assert page.evaluate("location.hash") == f"#/agents/{target}"
        assert_clean(watched)


def test_sign_in_page(seeded, browser):
    with tab(browser, seeded.url) as watched:
        watched.open()
        watched.page.wait_for_selector("#token")
        watched.page.fill("#token", "not-a-token")
        watched.page.click("button[type=submit]")
        watched.page.wait_for_selector("[role=alert]")
        assert "Invalid token" in watched.page.locator("[role=alert]").inner_text()
        assert watched.page.evaluate("sessionStorage.length") == 0
        watched.page.fill("#token", "")
        watched.screenshot("signin")
        assert watched.dialogs == [] and watched.refused == []


# -- done when 3: sign-in with an identity provider ------------------------------------


@pytest.fixture
def idp() -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider(algorithms=("RS256",))
    provider.serve()
    yield provider
    provider.stop()


def test_signing_in_with_the_identity_provider_gives_the_users_role(start, idp, browser):
    daemon = start({"MNEMOM_OIDC_ISSUER": idp.issuer, "MNEMOM_OIDC_AUDIENCE": AUDIENCE,
                    "MNEMOM_OIDC_CLIENT_ID": idp.client_id, "AIP_ENABLED": "false"})
    anthropic_call(daemon.base_url, "oidc-bot", "sk-oidc")
    token = idp.token(roles=["owner"])
    agents = api_call(daemon.base_url, "GET", "/v1/agents", token=token).body["items"]
    ident = agents[0]["agent_id"]
    with raw_request(daemon.base_url, "GET", "/console/") as response:
        response.read_body()
        csp = response.header("content-security-policy")
    assert f"connect-src 'self' {idp.issuer};" in csp

    def sign_in(watched: Any) -> None:
        watched.open()
        watched.page.click("[data-testid=oidc-signin]")
        watched.page.wait_for_selector("[data-testid=who]")

    with tab(browser, daemon.base_url, allowed=(idp.issuer,)) as watched:
        idp.user = {"sub": "vera@example", "roles": ["viewer"]}
        assert watched.page.goto(f"{daemon.base_url}/console/")
        button = watched.page.wait_for_selector("[data-testid=oidc-signin]")
        assert button.inner_text() == f"Sign in with {idp.issuer.split('//')[1]}"
        sign_in(watched)
        page = watched.page
        assert page.locator("[data-testid=who]").inner_text().startswith(
            "vera@example (viewer)")
        assert "code=" not in page.url
        watched.go(f"#/agents/{ident}", "svg.chart, main section")
        assert page.locator("main button").count() == 0

        page.click("text=Sign out")
        idp.user = {"sub": "adam@example", "roles": ["admin"]}
        sign_in(watched)
        watched.go(f"#/agents/{ident}", "button[data-action=pause]")
        page.click("button[data-action=pause]")
        page.wait_for_selector("[data-testid=containment]:has-text('paused')")
        assert page.locator("button[data-action=kill]").count() == 0  # an owner's
        assert watched.dialogs == [] and watched.page_errors == [] and watched.refused == []
    assert idp.token_outcomes == ["issued", "issued"]
    log = api_call(daemon.base_url, "GET", f"/v1/agents/{ident}/containment",
                   token=token).body["log"]
    assert [(e["action"], e["actor"]) for e in log] == [("pause", "adam@example")]


def test_a_forged_sign_in_return_is_refused_and_the_console_still_works(start, idp, browser):
    daemon = start({"MNEMOM_OIDC_ISSUER": idp.issuer, "MNEMOM_OIDC_AUDIENCE": AUDIENCE,
                    "MNEMOM_OIDC_CLIENT_ID": idp.client_id, "AIP_ENABLED": "false"})
    owner = idp.token(roles=["owner"], sub="olga@example")
    with tab(browser, daemon.base_url, allowed=(idp.issuer,)) as watched:
        page = watched.page
        # A link someone sent: a code and a state this tab never asked for.
        page.goto(f"{daemon.base_url}/console/?code=stolen&state=made-up")
        page.wait_for_selector("[role=alert]")
        assert "sign-in state does not match" in page.locator("[role=alert]").inner_text()
        assert "code=" not in page.url
        page.fill("#token", owner)
        page.click("button[type=submit]")
        page.wait_for_selector("[data-testid=who]")
        page.click("nav >> text=Deployment")
        page.wait_for_selector("[data-testid=version]")
        assert watched.dialogs == [] and watched.page_errors == [] and watched.refused == []
    assert idp.token_outcomes == []  # nothing was exchanged


# -- done when 5: the screenshots of docs/console.md -------------------------------------


def test_console_doc_shows_exactly_the_screenshots_the_tests_take():
    text = (DOCS / "console.md").read_text(encoding="utf-8")
    referenced = set(re.findall(r"\]\(images/console/([\w-]+\.png)\)", text))
    taken = {path.name for path in SCREENSHOTS.glob("*.png")}
    here = Path(__file__).read_text(encoding="utf-8")
    by_tests = {f"{name}.png" for name in re.findall(r'screenshot\("([\w-]+)"\)', here)}
    assert referenced and referenced == by_tests == taken
    for name in referenced:
        data = (SCREENSHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) < 400_000, name


def test_screenshots_are_desktop_sized():
    for path in SCREENSHOTS.glob("*.png"):
        header = path.read_bytes()[16:24]
        width, height = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")
        assert (width, height) == (1280, 800), path.name


def test_tokens_never_reach_the_log(seeded):
    output = seeded.daemon.output()
    for token in (ADMIN, VIEWER, OWNER):
        assert token not in output and token.split(".")[-1] not in output


def test_without_credentials_the_console_reads_but_its_controls_are_refused(start, browser):
    daemon = start({"AIP_ENABLED": "false"})
    anthropic_call(daemon.base_url, "local-bot", "sk-local")
    ident = agent_id(daemon.base_url, "local-bot")
    with tab(browser, daemon.base_url) as watched:
        watched.sign_in("anything")
        page = watched.page
        assert "No API credential is configured" in page.locator("#notice").inner_text()
        watched.go(f"#/agents/{ident}", "button[data-action=pause]")
        page.click("button[data-action=pause]")
        page.wait_for_selector("[role=alert]")
        assert "only serves loopback clients" in page.locator("[role=alert]").inner_text()
        assert watched.dialogs == [] and watched.page_errors == [] and watched.refused == []
    assert api_call(daemon.base_url, "GET", f"/v1/agents/{ident}", token=None).body[
        "containment_status"] == "active"
