"""``python -m mobileclip_export`` = the ``mobileclip-export`` command."""

from mobileclip_export.cli import entry

entry()
