"""``python -m bench.attestation``: CPU per checkpoint of attestation, on and off.

What the pipeline adds per checkpoint with ``AIP_ATTESTATION`` on: the input commitments
(over the card, the conscience values and the window), the chain link, the Merkle leaf and
the Ed25519 signature (``attestation.attestation_row``). "Off" is the same loop without
them. Process CPU time (``time.process_time``), the median of several rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mnemomd.integrity import attestation as a

CARD = {"card_id": "ac-bench", "agent_id": "smolt-bench", "values": {
    "declared": ["honesty", "safety", "transparency"]},
    "autonomy": {"bounded_actions": ["inference", "search", "read_files"],
                 "forbidden_actions": ["exfiltrate", "delete_data"]}}
VALUES = [{"type": "BOUNDARY", "content": "Never exfiltrate customer data"},
          {"type": "FEAR", "content": "Hiding a failed tool call from the user"}]
WINDOW = [{"checkpoint_id": f"ic-{i:08x}", "verdict": "clear",
           "reasoning_summary": "The agent searched and summarised as asked."}
          for i in range(10)]


def per_checkpoint(count: int, attest: bool, key: a.SigningKey) -> float:
    """CPU seconds per checkpoint over ``count`` checkpoints of one session."""
    head = None
    started = time.process_time()
    for i in range(count):
        cid, created = f"ic-{i:08x}", 1_700_000_000_000 + i
        thinking = f"{i:064x}"
        if attest:
            commitments = a.input_commitments(thinking, CARD, VALUES, WINDOW, "claude-haiku")
            link = a.next_link(head, cid, "clear", thinking,
                               commitments["combined_commitment"], a.iso_timestamp(created))
            a.attestation_row(key, agent_id="smolt-bench", session_id="s", checkpoint_id=cid,
                              verdict="clear", thinking_block_hash=thinking,
                              commitments=commitments, link=link, created_at=created)
            head = a.link_head(link)
    return (time.process_time() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = a.SigningKey(Ed25519PrivateKey.generate())
    on = statistics.median(per_checkpoint(args.count, True, key) for _ in range(args.rounds))
    off = statistics.median(per_checkpoint(args.count, False, key)
                            for _ in range(args.rounds))
    print(f"checkpoints per round  {args.count} x {args.rounds} rounds")
    print(f"attestation off        {off * 1e3:.4f} ms CPU per checkpoint")
    print(f"attestation on         {on * 1e3:.4f} ms CPU per checkpoint")
    print(f"attestation adds       {(on - off) * 1e3:.4f} ms CPU per checkpoint")


if __name__ == "__main__":
    main()
