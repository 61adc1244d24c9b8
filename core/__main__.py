"""``python -m mobileclip_export`` = the ``mobileclip-export`` command."""

import sys

from mobileclip_export.cli import main

sys.exit(main())
