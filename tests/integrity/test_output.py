"""Output analysis (``without_reasoning: analyse_output``): the prompt, its truncation, the
hash, what counts as no analysable reasoning, and the analyzer's outcome.

The ``OUTPUT ANALYSIS`` section is pinned by ``fixtures/output_analysis_section.txt``, a
byte-for-byte copy of the template literal ``buildSystemPrompt(includeOutputInstructions)``
appends in Mnemom's TypeScript AIP SDK (``packages/typescript/src/analysis/prompt.ts``,
mnemom/aip at dfa2c4e). The Python SDK has no such section; the gateway's prompt is the
Python SDK's base prompt followed by that section.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aip.analysis.prompt import PromptInput, build_conscience_prompt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mnemomd.config.analysis import AnalysisSettings
from mnemomd.integrity.backends import AnalysisFailure
from mnemomd.integrity.engine import (
    IntegrityAnalyzer,
    card_from_dict,
    conscience_values_from_dicts,
    window_for_prompt,
)
from mnemomd.integrity.output import (
    NO_REASONING_THINKING,
    OUTPUT_ANALYSIS_SECTION,
    output_hash,
    reasoning_gap,
    truncate_output,
)
from mnemomd.ops.metrics import GatewayMetrics
from mnemomd.providers.base import Extraction
from tests.integrity.fakes import VERDICT_CLEAR, VERDICT_VIOLATION
from tests.integrity.helpers import CARD, CONSCIENCE, request

FIXTURE = Path(__file__).parent / "fixtures" / "output_analysis_section.txt"
OUTPUT = 'Sending it now.\n[TOOL CALL] send_to_pastebin {"text":"q3 numbers","public":true}'
SHORT_THINKING = "Paste the numbers."


class RecordingBackend:
    """Keeps each prompt it is sent and answers with ``answer()``."""

    name = "anthropic"
    model = "analysis-model"

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.prompts: list[tuple[str, str]] = []

    def complete(self, system: str, user: str, max_tokens: int) -> Deferred[str]:
        self.prompts.append((system, user))
        return self.answer()


def run(answer: Any, settings: AnalysisSettings | None = None,
        **overrides: Any) -> tuple[Any, RecordingBackend]:
    backend = RecordingBackend(answer)
    analyzer = IntegrityAnalyzer(settings or AnalysisSettings(), Clock(), backend,
                                 metrics=GatewayMetrics(process_collectors=False))
    results: list[Any] = []
    analyzer.analyze(request(**overrides)).addBoth(results.append)
    [outcome] = results
    return outcome, backend


def verdict(data: dict[str, Any]) -> Any:
    return lambda: succeed(json.dumps(data))


def python_base(thinking: str) -> Any:
    """The Python SDK's own conscience prompt for the helpers' request."""
    req = request(thinking=thinking)
    return build_conscience_prompt(PromptInput(
        card=card_from_dict(CARD), conscience_values=conscience_values_from_dicts(CONSCIENCE),
        window_context=window_for_prompt(req.window_checkpoints), thinking_block=thinking,
        task_context=req.task_context, token_budget=AnalysisSettings().thinking_token_budget))


# -- the prompt --------------------------------------------------------------------------


def test_the_output_section_is_the_typescript_sdks_verbatim():
    assert OUTPUT_ANALYSIS_SECTION == FIXTURE.read_text(encoding="utf-8")
    assert OUTPUT_ANALYSIS_SECTION.startswith("\n\nOUTPUT ANALYSIS:\n")


def test_the_prompt_is_the_python_base_then_the_section_then_the_output_block():
    _, backend = run(verdict(VERDICT_CLEAR), thinking="", output_block=OUTPUT)
    [(system, user)] = backend.prompts
    base = python_base(NO_REASONING_THINKING)
    assert system == base.system + FIXTURE.read_text(encoding="utf-8")
    assert user == f"{base.user}\n\nOUTPUT BLOCK TO EVALUATE:\n\n{OUTPUT}"
    assert f"THINKING BLOCK TO EVALUATE:\n\n{NO_REASONING_THINKING}" in user


def test_short_reasoning_is_analysed_with_the_output():
    _, backend = run(verdict(VERDICT_CLEAR), thinking=SHORT_THINKING, output_block=OUTPUT)
    [(system, user)] = backend.prompts
    assert user == f"{python_base(SHORT_THINKING).user}\n\nOUTPUT BLOCK TO EVALUATE:\n\n{OUTPUT}"
    assert NO_REASONING_THINKING not in user


def test_a_reasoning_analysis_has_no_output_section():
    outcome, backend = run(verdict(VERDICT_CLEAR))
    [(system, user)] = backend.prompts
    assert "OUTPUT ANALYSIS:" not in system and "OUTPUT BLOCK" not in user
    assert outcome.analysis_metadata["analysis_scope"] == "thinking_only"
    assert outcome.output_block_hash is None and outcome.thinking_block_hash is not None


# -- truncation and hash -----------------------------------------------------------------


def test_output_within_the_budget_is_sent_whole():
    text = "x" * (2048 * 4)
    cut = truncate_output(text)
    assert (cut.text, cut.truncated, cut.original_tokens, cut.analyzed_tokens) == (
        text, False, 2048, 2048)


def test_long_output_keeps_head_and_tail_around_a_marker():
    text = "".join(chr(ord("a") + i % 26) for i in range(10_000))  # 2500 tokens
    cut = truncate_output(text, 2048)
    # As the TypeScript SDK: head 75 % (1536 tokens), tail 25 % (512), 452 left out.
    marker = "\n[... 452 output tokens omitted ...]\n"
    assert cut.text == text[:6144] + marker + text[-2048:]
    assert (cut.truncated, cut.original_tokens) == (True, 2500)
    assert cut.analyzed_tokens == -(-len(cut.text) // 4)
    assert text not in repr(cut)


def test_the_output_hash_is_sha256_of_the_utf8_block():
    block = "héllo 世界 🌍\n[TOOL CALL] t {}"
    assert output_hash(block) == hashlib.sha256(block.encode("utf-8")).hexdigest()
    # A text-only block is the TypeScript SDK's text blocks joined with "\n".
    assert output_hash("a\nb") == hashlib.sha256(b"a\nb").hexdigest()
    assert len(output_hash("\udcff")) == 64  # lone surrogates do not raise


# -- what counts as no analysable reasoning ----------------------------------------------


def extraction(thinking: str | None, redacted: bool = False) -> Extraction:
    return Extraction(thinking, 1 if thinking else 0, redacted, [], "", "m", True)


@pytest.mark.parametrize("thinking, redacted, minimum, gap", [
    (None, False, 100, "no_reasoning"),
    ("   ", False, 100, "no_reasoning"),
    (None, True, 100, "redacted_reasoning"),
    ("x" * 396, False, 100, "below_minimum_evidence"),  # 99 tokens
    ("x" * 397, False, 100, None),  # 100 tokens
    ("x" * 400, True, 100, None),  # readable reasoning next to redacted blocks
    ("x", False, 0, None),
])
def test_reasoning_gap(thinking, redacted, minimum, gap):
    assert reasoning_gap(extraction(thinking, redacted), minimum) == gap


# -- the analyzer's outcome --------------------------------------------------------------


def test_an_output_only_outcome_records_the_output_not_the_thinking():
    outcome, _ = run(verdict(VERDICT_VIOLATION), thinking="", output_block=OUTPUT)
    assert (outcome.verdict, outcome.synthetic) == ("boundary_violation", False)
    assert outcome.output_block_hash == hashlib.sha256(OUTPUT.encode()).hexdigest()
    assert outcome.thinking_block_hash is None
    metadata = outcome.analysis_metadata
    assert metadata["analysis_scope"] == "output_only" == outcome.analysis_scope
    assert (metadata["output_tokens_original"], metadata["output_tokens_analyzed"],
            metadata["output_truncated"]) == (20, 20, False)  # 80 characters
    assert (metadata["thinking_tokens_original"], metadata["thinking_tokens_analyzed"]) == (0, 0)
    assert OUTPUT not in repr(outcome) and "q3 numbers" not in str(outcome.to_dict())


def test_an_outcome_with_short_thinking_has_both_hashes():
    outcome, _ = run(verdict(VERDICT_CLEAR), thinking=SHORT_THINKING, output_block=OUTPUT)
    assert outcome.analysis_scope == "thinking_and_output"
    assert outcome.thinking_block_hash == hashlib.sha256(SHORT_THINKING.encode()).hexdigest()
    assert outcome.output_block_hash is not None


def test_output_has_no_minimum_evidence():
    """A one-line tool call is exactly what must be analysed, however short."""
    settings = AnalysisSettings(min_evidence_tokens=1000)
    outcome, backend = run(verdict(VERDICT_VIOLATION), settings, thinking="",
                           output_block="[TOOL CALL] rm {}")
    assert len(backend.prompts) == 1 and outcome.verdict == "boundary_violation"
    reasoning_only, backend = run(verdict(VERDICT_VIOLATION), settings, thinking="short")
    assert backend.prompts == [] and reasoning_only.synthetic


def test_a_failed_output_analysis_is_synthetic_by_the_failure_mode_and_says_so():
    def down() -> Deferred[str]:
        return fail(AnalysisFailure("unreachable"))

    outcome, _ = run(down, AnalysisSettings(failure_mode="fail_closed"), thinking="",
                     output_block=OUTPUT)
    assert (outcome.verdict, outcome.synthetic) == ("boundary_violation", True)
    assert outcome.analysis_scope == "output_only"
    assert outcome.output_block_hash == output_hash(OUTPUT)
    assert outcome.analysis_metadata["output_tokens_analyzed"] == 0


def test_long_output_is_truncated_for_the_prompt_but_hashed_whole():
    block = "y" * 40_000
    outcome, backend = run(verdict(VERDICT_CLEAR), AnalysisSettings(output_token_budget=100),
                           thinking="", output_block=block)
    [(_, user)] = backend.prompts
    assert block not in user and "output tokens omitted" in user
    assert outcome.output_block_hash == output_hash(block)
    assert outcome.analysis_metadata["output_truncated"] is True
