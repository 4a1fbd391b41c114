"""``python -m pixelkit`` runs the ``pixelkit`` command."""

from pixelkit.cli import main

raise SystemExit(main())
