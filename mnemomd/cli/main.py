"""The ``mnemomd`` command: run the daemon, check its configuration, say its version,
and manage a running daemon through its API (``mnemomd.cli.admin``).

``mnemomd run`` builds the service itself and runs the reactor in the foreground, with no
twistd plugin discovery, because a frozen binary has no plugin directory to scan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO

from mnemomd.config import (
    EX_CONFIG,
    OPT_OUT_WARNING,
    SETTINGS,
    Config,
    ConfigError,
    StorageConfig,
    load_config,
)
from mnemomd.ops.build import version_text


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="YAML configuration file (default: $MNEMOM_CONFIG, else "
                             "/etc/mnemomd/mnemomd.yaml if present)")
    for setting in SETTINGS:
        if setting.flag:
            parser.add_argument(setting.flag, dest=setting.env, metavar=setting.env,
                                help=f"{setting.help} [env {setting.env}]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnemomd", description="Mnemom integrity gateway")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    add_config_flags(run)
    check = commands.add_parser("check-config",
                                help="validate and print the effective configuration")
    add_config_flags(check)
    check.add_argument("--strict", action="store_true",
                       help="treat warnings (deprecated or unknown names, a missing analysis "
                            "key) as errors")
    migrate = commands.add_parser("migrate", help="apply pending database migrations")
    add_config_flags(migrate)
    commands.add_parser("version", help="print the version and build")
    license_parser = commands.add_parser("license", help="show the configured license")
    license_commands = license_parser.add_subparsers(dest="license_command", required=True)
    show_license = license_commands.add_parser("show", help="claims, state and days left")
    show_license.add_argument("--json", action="store_true", help="print JSON")
    add_config_flags(show_license)

    from mnemomd.cli.admin import add_management_commands
    from mnemomd.cli.attest import add_attestation_commands

    add_management_commands(commands, add_config_flags)
    add_attestation_commands(commands, add_config_flags)
    return parser


def flag_values(args: argparse.Namespace) -> dict[str, str]:
    return {s.env: getattr(args, s.env) for s in SETTINGS
            if s.flag and getattr(args, s.env, None) is not None}


def check_config(config: Config, strict: bool, out: IO[str]) -> int:
    """``mnemomd check-config``: every effective value and its source, section by section,
    then the warnings; under ``--strict`` a warning fails like an error (exit 78)."""
    width = max(len(s.env) for s in SETTINGS)
    out.write(f"Configuration file: {config.config_path or '(none)'}\n")
    for section, rows in config.describe_sections():
        out.write(f"[{section}]\n")
        for name, value, source in rows:
            out.write(f"{name:<{width}}  {value}  [{source}]\n")
    for warning in config.warnings:
        out.write(f"warning: {warning}\n")
    integrity = config.integrity
    if integrity.aip_enabled and integrity.aip_default_without_reasoning == "allow" \
            and integrity.aip_default_enforcement != "enforce":  # else a warning above
        # Not a warning (agents are put in enforce one by one), but said every time.
        out.write(f"note: AIP_DEFAULT_WITHOUT_REASONING is allow. {OPT_OUT_WARNING}.\n")
    if strict and config.warnings:
        out.write("check-config --strict: warnings count as errors\n")
        return EX_CONFIG
    out.write("Configuration OK\n")
    return 0


def run(config: Config, environ: Mapping[str, str],
        flags: Mapping[str, str] | None = None) -> int:
    """``mnemomd run``: the daemon; with ``MNEMOM_WORKERS`` above 1 the supervisor of its
    workers (``flags`` are handed on to them); in a worker, that worker."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from mnemomd.ops.logging import start_logging
    from mnemomd.ops.workers import worker_slot
    from mnemomd.service import make_service

    try:
        worker = worker_slot(environ)
    except ValueError as e:
        print(f"mnemomd: {e}", file=sys.stderr)
        return EX_CONFIG
    role = worker.role(config.daemon.role) if worker is not None else config.daemon.role
    if worker is None and config.daemon.workers > 1:
        role = "supervisor"
    start_logging(config.logging.log_format, config.logging.log_level, f"mnemomd-{role}")
    log = Logger(namespace="mnemomd")
    if worker is None:  # workers load the same configuration: warned once
        for warning in config.warnings:
            log.warn("Configuration: {warning}", warning=warning)
    if worker is None and config.daemon.workers > 1:
        return supervise(config, environ, flags or {})
    try:
        service = make_service(config, reactor, environ, worker=worker)
    except OSError as e:
        log.critical("Cannot open the data directory or database: {reason}",
                     reason=f"{e.strerror}: {e.filename}")
        return EX_CONFIG
    try:
        service.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 1)
    service.freeze_heap_when_started()
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if worker is not None:
        from mnemomd.cli.workers import watch_supervisor

        reactor.callWhenRunning(watch_supervisor, reactor, worker)
    reactor.run()
    return service.exit_code


def supervise(config: Config, environ: Mapping[str, str], flags: Mapping[str, str]) -> int:
    """Run the supervisor of ``MNEMOM_WORKERS`` workers until it is stopped."""
    from twisted.internet import reactor

    from mnemomd.cli.workers import Supervisor, worker_command
    from mnemomd.ops.notify import SystemdNotifier

    supervisor = Supervisor(config, reactor, environ,
                            worker_command(flags, config.config_path),
                            SystemdNotifier(environ))
    try:
        supervisor.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 1)
    reactor.callWhenRunning(supervisor.startService)
    reactor.addSystemEventTrigger("before", "shutdown", supervisor.stopService)
    reactor.run()
    return supervisor.exit_code


def show_license_info(config: Config, as_json: bool, out: IO[str]) -> int:
    """``mnemomd license show``: what the daemon would make of its license right now."""
    import time

    from mnemomd.cloud.license import LicenseInfo, load_trusted_keys, verify_license

    license_ = config.license
    if not license_.mnemom_license_jwt:
        info = LicenseInfo.unlicensed()
    else:
        info = verify_license(license_.mnemom_license_jwt,
                              load_trusted_keys(license_.mnemom_license_public_key), time.time())
    summary = info.summary()
    if info.feature_flags:
        summary["feature_flags"] = info.feature_flags
    if info.limits:
        summary["limits"] = info.limits
    if license_.mnemom_license_jwt:
        summary["is_offline"] = info.is_offline
    if "seconds_to_expiry" in summary:
        summary["days_left"] = round(summary["seconds_to_expiry"] / 86400, 1)
    if as_json:
        out.write(json.dumps(summary, indent=2, default=str) + "\n")
    else:
        for name, value in summary.items():
            out.write(f"{name:<18} {value}\n")
    return 0 if info.allows_traffic else 1


def migrate_database(config: StorageConfig, out: IO[str]) -> int:
    """``mnemomd migrate``: bring the schema to this build's version, then exit."""
    from twisted.internet import reactor

    from mnemomd.storage.database import Database, mask_database_url
    from mnemomd.storage.migrations import MigrationError, SchemaTooNew, migrate

    outcome: dict[str, object] = {}

    def go() -> None:
        try:
            db = Database(reactor, config.database_url)
            db.start()
        except OSError as e:
            outcome["result"] = MigrationError(f"cannot open the database ({e.strerror})")
            reactor.stop()
            return
        except Exception as e:  # anything else must end the command too, never hang it
            outcome["result"] = e
            reactor.stop()
            return
        d = migrate(db, int(reactor.seconds() * 1000))
        d.addBoth(lambda result: outcome.setdefault("result", result))
        d.addBoth(lambda _: db.close())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    result = outcome.get("result")
    display = mask_database_url(config.database_url)
    if isinstance(result, list):
        out.write(f"{display}: " + (f"applied {', '.join(result)}\n" if result
                                     else "schema is up to date\n"))
        return 0
    error = getattr(result, "value", result)
    print(f"mnemomd migrate: {display}: {error}", file=sys.stderr)
    if isinstance(error, SchemaTooNew | MigrationError):
        return EX_CONFIG
    return 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(version_text())
        return 0
    from mnemomd.cli.admin import MANAGEMENT_COMMANDS

    if args.command not in ("run", "check-config", "migrate", "license", "verify", "keys",
                            *MANAGEMENT_COMMANDS):
        parser.print_help()
        return 2
    if args.command in ("verify", "keys"):
        from mnemomd.cli.attest import run_attestation_command

        def load() -> Config:
            return load_config(flag_values(args), environ, args.config)

        try:
            return run_attestation_command(args, load, sys.stdout, sys.stderr)
        except ConfigError as e:
            print(e.render(), file=sys.stderr)
            return EX_CONFIG
    if args.command == "policy" and args.policy_command in ("check", "evaluate"):
        from mnemomd.cli.admin import local_policy_command

        return local_policy_command(args, sys.stdout, sys.stderr)
    try:
        config = load_config(flag_values(args), environ, args.config)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return EX_CONFIG
    if args.command == "check-config":
        return check_config(config, args.strict, sys.stdout)
    if args.command == "migrate":
        return migrate_database(config.storage, sys.stdout)
    if args.command == "license":
        return show_license_info(config, args.json, sys.stdout)
    if args.command in MANAGEMENT_COMMANDS:
        from mnemomd.cli.admin import run_admin_command

        return run_admin_command(config, args, sys.stdout, sys.stderr, environ)
    return run(config, environ, flag_values(args))
