"""The sweep report: a self-contained report.html with its plots."""
