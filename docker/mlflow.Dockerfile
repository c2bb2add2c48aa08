# MLflow tracking server with the PostgreSQL driver that the official ghcr.io/mlflow/mlflow image
# lacks (MLflow's own docker-compose pip-installs psycopg2-binary at start; baking it in keeps the
# start offline and the image reproducible).
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" psycopg2-binary

EXPOSE 5000
CMD ["mlflow", "server", "--host=0.0.0.0", "--port=5000"]
