# Two images (docker-compose.yml builds both):
#   mlflow-server  the MLflow tracking server with the Postgres and S3 drivers it needs
#   worker         a Prefect worker with this project installed (the default target)
# The worker's Prefect and MLflow match the servers in docker-compose.yml (tests/test_compose.py
# checks it): a client newer than its server can call endpoints the server lacks.
ARG MLFLOW_VERSION=3.17.2

FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION} AS mlflow-server
ARG MLFLOW_VERSION
# mlflow[auth]: --app-name basic-auth (users and permissions; the admin comes from the
# environment, MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, set from .env by docker-compose.yml)
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg[binary]==3.3.9" boto3==1.44.8 \
 && mkdir -p /etc/mlflow /mlflow-auth \
 && printf '%s\n' '[mlflow]' 'default_permission = NO_PERMISSIONS' \
      'database_uri = sqlite:////mlflow-auth/basic_auth.db' \
      'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' > /etc/mlflow/auth.ini
ENV MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/auth.ini

FROM python:3.11-slim-bookworm AS worker
ARG MLFLOW_VERSION
ARG PREFECT_VERSION=3.9.1
ARG TORCH_VERSION=2.13.0
# CPU wheels by default; the gpu service passes an index with CUDA wheels.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    SENTIFLOW_DATA_ROOT=/data \
    SENTIFLOW_PROJECT_DIR=/app

RUN useradd --create-home --uid 1000 sentiflow \
    && mkdir /data && chown sentiflow:sentiflow /data
# torch first, on its own layer: the largest download, and it changes least.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md prefect.yaml prefect-gpu.yaml ./
COPY flows ./flows
COPY tasks ./tasks
COPY storage ./storage
RUN pip install . "prefect==${PREFECT_VERSION}" "mlflow==${MLFLOW_VERSION}" \
    && rm -rf build ./*.egg-info

USER sentiflow
CMD ["prefect", "worker", "start", "--pool", "sentiflow", "--type", "process", "--with-healthcheck"]
