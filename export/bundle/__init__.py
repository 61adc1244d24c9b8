"""The bundle: the output folder an app team receives, and the one way to read it back.

Modules: ``reader`` (the one way to read a bundle: manifest lookup, validation against ``schema``, paths
kept inside the bundle, the sha256 check), ``schema`` (the manifest's declared shape), ``layout`` (file names,
atomic writing), ``manifest`` (records and manifest.json), ``integrity`` (file hashes, ``check``), ``golden``
(golden vectors), ``model_card`` (README.md), ``app_files`` (what makes a bundle app-ready).
"""
