-- Run once by the postgres image's entrypoint, on an empty data volume, as POSTGRES_USER
-- (who owns both databases).
CREATE DATABASE optuna;  -- the Optuna study DB (SWEEPER_STORAGE)
CREATE DATABASE mlflow;  -- MLflow's backend store
