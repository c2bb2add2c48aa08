"""sweeper: settle freeze-vs-fine-tune per dataset with an Optuna study, MLflow runs and a report."""

__version__ = "0.1.0"
