"""Study configs and `python -m studies.run NAME`: Ray Tune + Optuna multi-objective search."""
