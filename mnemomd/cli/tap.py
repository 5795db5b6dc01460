"""``twistd mnemomd``: the same service as ``mnemomd run``, for operators who use twistd.

twistd owns logging in this mode; pass ``--logger mnemomd.cli.tap.log_observer`` to get the
daemon's JSON lines instead of twistd's text log (that observer reads the environment and
the configuration file, not the plugin's flags, because twistd creates it first).
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from mnemomd.config import EX_CONFIG, SETTINGS, ConfigError, load_config
from mnemomd.ops.logging import make_observer
from mnemomd.ops.notify import SystemdNotifier
from mnemomd.service import make_service

log = Logger(namespace="mnemomd")


class Options(usage.Options):
    optParameters = [["config", None, None, "YAML configuration file"]] + [
        [s.flag.removeprefix("--"), None, None, f"{s.help} [env {s.env}]"]
        for s in SETTINGS if s.flag
    ]

    def postOptions(self) -> None:  # noqa: N802
        flags = {s.env: self[s.flag.removeprefix("--")] for s in SETTINGS
                 if s.flag and self[s.flag.removeprefix("--")] is not None}
        self.mnemomd_flags = flags
        try:
            self.mnemomd_config = load_config(flags, os.environ, self["config"])
        except ConfigError as e:
            # Same contract as ``mnemomd run``: every problem at once, exit 78.
            print(e.render(), file=sys.stderr)
            raise SystemExit(EX_CONFIG) from None


def makeService(options: Options) -> Service:  # noqa: N802
    """The daemon, or with ``--workers`` above 1 the supervisor of its workers (each one
    a ``mnemomd run`` process; twistd does not know their exit statuses)."""
    from twisted.internet import reactor

    config = options.mnemomd_config
    for warning in config.warnings:
        log.warn("Configuration: {warning}", warning=warning)
    if config.daemon.workers > 1:
        from mnemomd.cli.workers import Supervisor, worker_command

        return Supervisor(config, reactor, os.environ,
                          worker_command(options.mnemomd_flags, config.config_path),
                          SystemdNotifier(os.environ))
    service = make_service(config, reactor)
    service.freeze_heap_when_started()
    return service


def log_observer() -> ILogObserver:
    """Log observer factory for ``twistd --logger``; reads LOG_FORMAT / LOG_LEVEL."""
    try:
        config = load_config({}, os.environ)
        fmt, level, role = config.log_format, config.log_level, config.role
    except ConfigError:
        fmt, level, role = "json", "info", "all"
    return make_observer(sys.stdout, fmt, f"mnemomd-{role}", level)
