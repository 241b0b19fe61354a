# One image for the migration step, the worker, beat and Flower (see docker-compose.yml).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py alembic.ini ./
COPY docs/package.md ./docs/
COPY retry_pipeline ./retry_pipeline
RUN pip install --no-cache-dir -e '.[flower]' && useradd --create-home pipeline
USER pipeline
CMD ["retry-pipeline", "--help"]
