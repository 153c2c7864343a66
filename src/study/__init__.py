"""The demo and the small-scale study: scales and method lists (``demo``), the job scheduler
(``scheduler``), statistics (``stats``), the paper's tables (``paper``) and the reports
(``study_report``: study.json and its sections; ``report_table``: REPORT.md), and the tiny data, networks and teachers of smoke runs (``tiny``, shared by
the tests and the benchmarks). It drives the other stages through the ``shrinkteanet`` command line, and may
import every sub-package except ``cli``.
"""
