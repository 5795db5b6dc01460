"""Entry point of the frozen binary: the ``mnemomd`` command, with no plugin discovery."""

from mnemomd.cli.main import main

raise SystemExit(main())
