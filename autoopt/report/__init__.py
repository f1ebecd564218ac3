"""Rank and report: trial records and the rules that rank them, MLflow tracking, the console's progress and
tables, and the study's report files."""
