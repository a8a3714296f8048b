"""``python -m streamwatch``."""

import sys

from streamwatch.commands import main

sys.exit(main())
