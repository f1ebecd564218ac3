"""Ship the winner: the export (what was measured, rebuilt and written with its manifest), its verification in a
fresh process without autoopt, `autoopt bench`'s re-timing, `autoopt.load`, and the logged MLflow model."""
