"""``twistd mnemomd``: the same service as ``mnemomd run``, for operators who use twistd.

twistd owns logging in this mode; pass ``--logger mnemomd.tap.log_observer`` to get the
daemon's JSON lines instead of twistd's text log.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import ILogObserver
from twisted.python import usage

from mnemomd.config import SETTINGS, ConfigError, load_config
from mnemomd.ops.logging import make_observer
from mnemomd.service import MnemomService, make_service


class Options(usage.Options):
    optParameters = [["config", None, None, "YAML configuration file"]] + [
        [s.flag.removeprefix("--"), None, None, f"{s.help} [env {s.env}]"]
        for s in SETTINGS if s.flag
    ]

    def postOptions(self) -> None:  # noqa: N802
        flags = {s.env: self[s.flag.removeprefix("--")] for s in SETTINGS
                 if s.flag and self[s.flag.removeprefix("--")] is not None}
        try:
            self.mnemomd_config = load_config(flags, os.environ, self["config"])
        except ConfigError as e:
            raise usage.UsageError(e.render()) from None


def makeService(options: Options) -> MnemomService:  # noqa: N802
    service = make_service(options.mnemomd_config)
    service.listening.addErrback(lambda f: _stop_on_listen_failure(f))
    return service


def _stop_on_listen_failure(failure: Any) -> None:
    from twisted.internet import reactor
    from twisted.logger import Logger

    Logger(namespace="mnemomd").critical("Cannot listen: {reason}",
                                         reason=failure.getErrorMessage())
    reactor.stop()


def log_observer() -> ILogObserver:
    """Log observer factory for ``twistd --logger``; reads LOG_FORMAT / LOG_LEVEL."""
    try:
        config = load_config({}, os.environ)
        fmt, level, role = config.log_format, config.log_level, config.role
    except ConfigError:
        fmt, level, role = "json", "info", "all"
    return make_observer(sys.stdout, fmt, f"mnemomd-{role}", level)
