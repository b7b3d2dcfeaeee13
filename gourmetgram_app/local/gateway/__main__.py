"""``python -m gourmetgram_app.local.gateway``."""

import sys

from gourmetgram_app.local.gateway.cli import main

sys.exit(main())
