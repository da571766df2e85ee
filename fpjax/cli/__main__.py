"""``python -m fpjax.cli``: the console script."""

import sys

from fpjax.cli import main

sys.exit(main())
