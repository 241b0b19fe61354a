# One image for the migration step, the worker, beat and Flower (see docker-compose.yml).
# Dependencies come from requirements.lock (pip-tools, hashes checked): `make lock`
# regenerates it from pyproject.toml.
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md celeryconfig.py flowerconfig.py alembic.ini ./
COPY docs/package.md ./docs/
COPY retry_pipeline ./retry_pipeline
# Not editable: the package's console script; /app first on the path so that the
# migrations beside the package are found (alembic/ moves into the package later).
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 pipeline \
    && mkdir -p /app/var && chown pipeline /app/var
ENV PYTHONPATH=/app
USER pipeline
CMD ["retry-pipeline", "--help"]
