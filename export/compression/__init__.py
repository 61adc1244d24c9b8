"""Compressed precisions: what each name means (``precisions``), the data they are calibrated and judged on
(``calibration``), and the accuracy guard that decides whether a compressed artifact ships (``guard``).
"""
