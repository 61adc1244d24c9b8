"""The bundle: the output folder an app team receives, and the one way to read it back.

Modules: ``layout`` (file names, atomic writing), ``manifest`` (records and manifest.json), ``integrity``
(file hashes), ``golden`` (golden vectors), ``model_card`` (README.md), ``app_files`` (what makes a bundle
app-ready).
"""
