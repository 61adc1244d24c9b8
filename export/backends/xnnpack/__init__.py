"""Helpers shared by the XNNPACK-backed targets: the graph form XNNPACK runs best (``form``), what it
delegated (``census``) and the Android usage cards (``android_cards``). Declares no target."""
