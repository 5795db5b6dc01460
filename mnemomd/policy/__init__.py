"""Tool policies: Mnemom's policy grammar (schema ``"1.0"``), checked, compiled, evaluated.

Pure functions only: ``grammar`` parses and validates a policy document into a ``Policy``
(every problem named by its path), ``engine`` compiles its globs once, evaluates the tool
names a request offers, merges the deployment-wide policy with an agent's, and reports
how much of a card the mappings cover. Nothing here does I/O; storing and caching
policies is ``agents.policies``, enforcing them the proxy's.
"""

from mnemomd.policy.engine import (
    CompiledPolicy,
    Evaluation,
    compile_policy,
    coverage,
    effective_mode,
    evaluate,
    merge_policies,
)
from mnemomd.policy.grammar import (
    Policy,
    PolicyError,
    load_policy_text,
    parse_policy,
    policy_document,
    read_policy_file,
)

__all__ = [
    "CompiledPolicy", "Evaluation", "Policy", "PolicyError", "compile_policy", "coverage",
    "effective_mode", "evaluate", "load_policy_text", "merge_policies", "parse_policy",
    "policy_document", "read_policy_file",
]
