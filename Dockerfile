# One image for the API (gunicorn), the RQ worker and the cron process; docker-compose.yml runs it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY api ./api
COPY infra ./infra
COPY schemas ./schemas
COPY worker ./worker
COPY gunicorn.conf.py Procfile ./

RUN useradd --system --uid 10001 --home-dir /app batchpress \
    && mkdir -p /tmp/prometheus && chown batchpress /tmp/prometheus
USER batchpress

EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
