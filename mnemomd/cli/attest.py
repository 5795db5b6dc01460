"""``mnemomd verify`` and ``mnemomd keys rotate``: attestation from the command line.

``verify CERT.json --keys KEYS.json`` checks a certificate offline (no daemon, no
network): the pure check of ``integrity.attestation``. ``verify --database`` re-walks
every stored chain and Merkle tree (``integrity.ledger.audit``) and names the first
broken link. ``keys rotate`` writes a new signing key and retires the old one in the
database (docs/attestation.md). Commands that read the database run a reactor for the
one interaction they need, as ``mnemomd migrate`` does.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import IO, Any

from mnemomd.config import EX_CONFIG, Config, ConfigError, StorageConfig
from mnemomd.integrity.attestation import (
    AttestationError,
    SigningKey,
    keys_from_document,
    verify_certificate,
)

#: Exit statuses: verified / not verified (tampering found); unreadable input is 2.
EXIT_INVALID = 1
EXIT_USAGE = 2


def add_attestation_commands(commands: Any,
                             add_config_flags: Callable[[argparse.ArgumentParser], None]
                             ) -> None:
    verify = commands.add_parser(
        "verify", help="verify a certificate offline, or every stored chain and tree")
    verify.add_argument("certificate", nargs="?", metavar="CERT.json",
                        help="an IntegrityCertificate (GET /v1/checkpoints/ID/certificate)")
    verify.add_argument("--keys", metavar="KEYS.json",
                        help="the public keys (GET /v1/keys), needed with CERT.json")
    verify.add_argument("--root", metavar="HEX",
                        help="a Merkle root recorded earlier, which the proof must lead to")
    verify.add_argument("--database", action="store_true",
                        help="re-walk every chain and Merkle tree stored in DATABASE_URL")
    verify.add_argument("--json", action="store_true", help="print JSON")
    add_config_flags(verify)
    keys = commands.add_parser("keys", help="the checkpoint signing key")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    rotate = key_commands.add_parser(
        "rotate", help="write a new signing key, retire the old one (restart to use it)")
    add_config_flags(rotate)


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as e:
        raise AttestationError(f"cannot read {what} {path}: {e.strerror}") from None
    except ValueError:
        raise AttestationError(f"{what} {path} is not JSON") from None


def verify_file(cert_path: str, keys_path: str | None, root: str | None, as_json: bool,
                out: IO[str]) -> int:
    """``mnemomd verify CERT.json --keys KEYS.json [--root HEX]``: offline."""
    if keys_path is None:
        raise AttestationError("give --keys KEYS.json (the answer of GET /v1/keys): "
                               "verification needs the public keys")
    cert = _read_json(cert_path, "the certificate")
    keys = keys_from_document(_read_json(keys_path, "the keys"))
    result = verify_certificate(cert, keys, root)
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write(("VALID: " if result["valid"] else "INVALID: ") + result["details"] + "\n")
        for name, check in result["checks"].items():
            state = "-" if check is None else ("ok" if check["valid"] else "FAILED")
            out.write(f"  {name:<10} {state:<7} {check['details'] if check else 'no proof'}\n")
    return 0 if result["valid"] else EXIT_INVALID


def with_database(storage: StorageConfig, work: Callable[[Any], Any]) -> Any:
    """Run ``work(db)`` (a Deferred) on a reactor with the configured database; its
    result, or the exception it failed with, raised."""
    from twisted.internet import reactor
    from twisted.python.failure import Failure

    from mnemomd.storage.database import Database

    outcome: dict[str, Any] = {}

    def go() -> None:
        try:
            db = Database(reactor, storage.database_url)
            db.start()
        except Exception as e:  # the command must end, never hang
            outcome["result"] = e
            reactor.stop()
            return
        d = work(db)
        d.addBoth(lambda result: outcome.setdefault("result", result))
        d.addBoth(lambda _: db.close())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    result = outcome.get("result")
    if isinstance(result, Failure):
        result.raiseException()
    if isinstance(result, BaseException):
        raise result
    return result


def verify_database(storage: StorageConfig, as_json: bool, out: IO[str]) -> int:
    """``mnemomd verify --database``: every stored chain and tree; exit 1 on tampering."""
    from mnemomd.integrity.ledger import AttestationLedger

    report = with_database(storage, lambda db: AttestationLedger(db).audit())
    if as_json:
        out.write(json.dumps({
            "valid": report.valid, "checked": report.checked, "pruned": report.pruned,
            "unattested": report.unattested,
            "problems": [{"checkpoint_id": c, "problem": p} for c, p in report.problems],
            "roots": {agent: {"merkle_root": root, "leaf_count": n}
                      for agent, (root, n) in report.roots.items()}}, indent=2) + "\n")
        return 0 if report.valid else EXIT_INVALID
    for agent, (root, leaves) in sorted(report.roots.items()):
        out.write(f"{agent}  {leaves} leaves  root {root}\n")
    out.write(f"checked {report.checked} checkpoints ({report.pruned} deleted by retention, "
              f"{report.unattested} stored without attestation)\n")
    if report.valid:
        out.write("VALID: every chain and Merkle tree verifies\n")
        return 0
    first, problem = report.problems[0]
    out.write(f"INVALID: checkpoint {first}: {problem}\n")
    for checkpoint_id, other in report.problems[1:]:
        out.write(f"  also checkpoint {checkpoint_id}: {other}\n")
    return EXIT_INVALID


def rotate_key(config: Config, now_ms: int, out: IO[str]) -> int:
    """``mnemomd keys rotate``: a new key in the key file's place; the old file kept
    beside it as ``<file>.retired-<key_id>`` (mode 0600, to be destroyed once every
    replica has restarted); the old key marked retired in ``signing_keys`` and the new one
    published, so both keep verifying."""
    from mnemomd.integrity.keys import default_key_path, load_signing_key, new_key, write_key
    from mnemomd.integrity.ledger import AttestationLedger

    path = config.integrity.mnemom_signing_key_file or \
        default_key_path(config.daemon.mnemom_data_dir)
    old = load_signing_key(path, create=False)
    new: SigningKey = new_key()
    retired_path = f"{path}.retired-{old.key_id}"

    def record(db: Any) -> Any:
        ledger = AttestationLedger(db)
        d = ledger.retire_key(old.key_id, old.public_hex, now_ms)
        d.addCallback(lambda _: ledger.publish_key(new.key_id, new.public_hex, now_ms))
        return d

    with_database(config.storage, record)
    staged = f"{path}.new"
    write_key(staged, new)
    os.replace(path, retired_path)
    os.replace(staged, path)
    out.write(f"retired {old.key_id} (its private key moved to {retired_path})\n"
              f"new key {new.key_id} in {path}: restart every replica that signs with it\n")
    return 0


def run_attestation_command(args: argparse.Namespace, load: Callable[[], Config],
                            out: IO[str], err: IO[str]) -> int:
    """``verify`` or ``keys``; ``load`` reads the configuration (not needed offline)."""
    import time

    from mnemomd.storage.migrations import MigrationError

    try:
        if args.command == "verify":
            if args.database == bool(args.certificate):
                err.write("mnemomd verify: give either CERT.json or --database\n")
                return EXIT_USAGE
            if args.certificate:
                return verify_file(args.certificate, args.keys, args.root, args.json, out)
            return verify_database(load().storage, args.json, out)
        return rotate_key(load(), int(time.time() * 1000), out)
    except ConfigError:
        raise
    except AttestationError as e:
        err.write(f"mnemomd {args.command}: {e}\n")
        return EXIT_USAGE
    except (OSError, MigrationError) as e:
        err.write(f"mnemomd {args.command}: {e}\n")
        return EX_CONFIG
    except Exception as e:
        err.write(f"mnemomd {args.command}: {type(e).__name__}: {e}\n")
        return EX_CONFIG
