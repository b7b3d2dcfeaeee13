"""``python -m gourmetgram.local.gateway``."""

import sys

from gourmetgram.local.gateway.cli import main

sys.exit(main())
