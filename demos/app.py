"""The browser demo, launched from a checkout: ``python demos/app.py [--ckpt ...]``.

The same as ``pixelkit demo``. The app itself is part of the package
(``pixelkit/demo/app.py``), so it works from an installed wheel too.
"""

from pixelkit.demo.app import main

if __name__ == "__main__":
    raise SystemExit(main())
