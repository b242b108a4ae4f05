"""MTDnet reproduction, the top layer: training, scoring, evaluation, report, bench.

Entry points live in tools/ and call into here; this package builds on core/
(the vocabulary), data_prep/, layers/ and prototxt/ (see core/__init__.py).
"""
