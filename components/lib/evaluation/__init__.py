"""What evaluate measures and writes: metrics, timing, plots, report.json's body and report.md.

May import: core, settings.
"""
