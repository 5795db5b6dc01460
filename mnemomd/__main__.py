"""Allow ``python -m mnemomd`` as well as the ``mnemomd`` console script."""

from mnemomd.cli.main import main

raise SystemExit(main())
