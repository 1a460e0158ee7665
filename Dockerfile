# cp-register API image: slim, non-root, uvicorn. Keys and database come from outside.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
RUN useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin cpr

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# Editable, so `cpr db upgrade` finds alembic.ini and migrations/ beside the code.
RUN pip install -e . && chown -R root:root /srv && chmod -R a-w /srv \
    && install -d -o cpr -g cpr -m 0700 /var/lib/cpr/checkpoints

USER cpr
# Production refuses to start without its keys: mount the key directory (a
# Kubernetes secret shared by every replica, holding the ES256 token keys and
# the Ed25519 checkpoint key) and set DATABASE_URL. Checkpoints are copied to
# /var/lib/cpr/checkpoints: mount storage there that the database's
# administrators cannot rewrite (docs/audit-log.md).
ENV CPR_ENVIRONMENT=production \
    CPR_KEY_DIR=/run/secrets/cpr-keys \
    CPR_CHECKPOINT_KEY_PATH=/run/secrets/cpr-keys/audit-checkpoint.ed25519.pem \
    CPR_CHECKPOINT_DIR=/var/lib/cpr/checkpoints \
    CPR_DATABASE_ROLE=cpr_app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--no-access-log", "--workers", "2", "--timeout-graceful-shutdown", "20"]
