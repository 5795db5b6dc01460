"""``mnemomd verify`` (offline and ``--database``) and ``mnemomd keys rotate``."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mnemomd.cli.main import main
from mnemomd.integrity import attestation as a
from mnemomd.integrity.checkpoints import checkpoint_write, write_checkpoints
from mnemomd.integrity.keys import load_signing_key, write_key
from mnemomd.storage.database import Cursor
from tests.e2e.daemon import daemon_environment, mnemomd_command
from tests.integrity.ledger_helpers import attested

KEY = a.SigningKey(Ed25519PrivateKey.generate())
NOW = 1_700_000_000_000


def session(count: int, session_id: str = "s1", key: a.SigningKey = KEY,
            start: int = NOW) -> list:
    head, records = None, []
    for i in range(count):
        record, head = attested(key, "smolt-cli", session_id, head, f"ic-{session_id}-{i}",
                                "clear", start + i * 1000)
        records.append(record)
    return records


def certificate_of(records: list, index: int) -> dict:
    record = records[index]
    leaves = [r.attestation["leaf_hash"] for r in records]
    proof, root = a.inclusion_proof(leaves, index)
    row = {**record.attestation,
           "input_commitments": json.loads(record.attestation["input_commitments"])}
    checkpoint = {"id": record.id, "agent_id": record.agent_id,
                  "session_id": record.session_id, "verdict": record.verdict,
                  "concerns": [], "reasoning_summary": record.reasoning_summary,
                  "thinking_block_hash": record.thinking_block_hash,
                  "created_at": record.created_at}
    return a.certificate(checkpoint=checkpoint, attestation=row, merkle={
        "leaf_hash": leaves[index], "leaf_index": index, "root": root,
        "tree_size": len(leaves), "inclusion_proof": proof})


def write(path: Path, document: object) -> str:
    path.write_text(json.dumps(document))
    return str(path)


KEYS = {"keys": [{"key_id": KEY.key_id, "public_key": KEY.public_hex, "algorithm": "Ed25519",
                  "created_at": NOW, "is_active": True}]}


def test_verify_offline_accepts_a_certificate_and_refuses_a_changed_one(tmp_path, capsys):
    records = session(3)
    cert = certificate_of(records, 1)
    keys = write(tmp_path / "keys.json", KEYS)
    root = cert["proofs"]["merkle"]["root"]
    assert main(["verify", write(tmp_path / "c.json", cert), "--keys", keys,
                 "--root", root]) == 0
    assert "VALID" in capsys.readouterr().out
    cert["claims"]["verdict"] = "boundary_violation"
    assert main(["verify", write(tmp_path / "bad.json", cert), "--keys", keys]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("INVALID") and "signature" in out
    assert main(["verify", write(tmp_path / "c2.json", certificate_of(records, 0)), "--keys",
                 keys, "--root", "0" * 64]) == 1


def test_verify_offline_needs_keys_and_readable_files(tmp_path, capsys):
    cert = write(tmp_path / "c.json", certificate_of(session(1), 0))
    assert main(["verify", cert]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main(["verify", cert, "--keys", str(tmp_path / "none.json")]) == 2
    assert main(["verify", cert, "--keys", write(tmp_path / "k.json", {"keys": "x"})]) == 2
    assert main(["verify"]) == 2 and "CERT.json or --database" in capsys.readouterr().err


def run(home: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*mnemomd_command(), *args],
                            env=daemon_environment(home, {"MNEMOM_DATA_DIR": str(home)}),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    return result


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, list]:
    """A migrated SQLite database in the data directory holding two attested sessions."""
    run(tmp_path, "migrate")
    records = session(3) + session(2, "s2", start=NOW + 10_000)
    with sqlite3.connect(tmp_path / "mnemomd.db") as connection:
        write_checkpoints(Cursor(connection.cursor(), "sqlite"),
                          [checkpoint_write(r) for r in records])
    return tmp_path, records


def test_verify_database_names_the_first_changed_checkpoint(stored):
    home, records = stored
    assert "VALID: every chain" in run(home, "verify", "--database").stdout
    with sqlite3.connect(home / "mnemomd.db") as connection:
        connection.execute("UPDATE integrity_checkpoints SET verdict = 'boundary_violation' "
                           "WHERE id = ?", (records[1].id,))
    out = run(home, "verify", "--database", expect=1).stdout
    assert f"INVALID: checkpoint {records[1].id}:" in out
    report = json.loads(run(home, "verify", "--database", "--json", expect=1).stdout)
    assert [p["checkpoint_id"] for p in report["problems"]] == [records[1].id]


def test_keys_rotate_retires_the_old_key_and_both_keep_verifying(stored):
    home, records = stored
    key_file = home / "signing-key.pem"
    write_key(str(key_file), KEY)
    out = run(home, "keys", "rotate").stdout
    new = load_signing_key(str(key_file), create=False)
    assert new.key_id != KEY.key_id and new.key_id in out
    retired = home / f"signing-key.pem.retired-{KEY.key_id}"
    assert load_signing_key(str(retired), create=False).key_id == KEY.key_id
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with sqlite3.connect(home / "mnemomd.db") as connection:
        listed = connection.execute("SELECT key_id, retired_at IS NULL FROM signing_keys "
                                    "ORDER BY retired_at IS NULL").fetchall()
        assert listed == [(KEY.key_id, 0), (new.key_id, 1)]
        later = session(2, "s3", key=new, start=NOW + 60_000)
        write_checkpoints(Cursor(connection.cursor(), "sqlite"),
                          [checkpoint_write(r) for r in later])
    assert "VALID" in run(home, "verify", "--database").stdout
    keys = {"keys": [{"key_id": k, "public_key": p} for k, p in
                     ((KEY.key_id, KEY.public_hex), (new.key_id, new.public_hex))]}
    keys_file = write(home / "keys.json", keys)
    for cert in (certificate_of(records[:3], 2), certificate_of(later, 1)):
        assert main(["verify", write(home / "c.json", cert), "--keys", keys_file]) == 0
