# cp-register: one image, two commands. The default runs the API (uvicorn, 2 workers); the
# worker is `cpr worker`, the migration `cpr db upgrade` (as the schema's owner). Slim,
# non-root, installs exactly the lock (requirements/runtime.txt, every file's hash
# checked). Keys and the database come from outside (deploy/).
# Pin the base by digest when you release (python:3.11-slim-bookworm@sha256:...).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
RUN groupadd --system --gid 10001 cpr \
    && useradd --system --uid 10001 --gid cpr --home-dir /srv --shell /usr/sbin/nologin cpr

# The dependencies first (their own layer: it changes only with the lock). --no-deps: what
# the lock does not name is not installed; --require-hashes: nor anything other than the
# files it names.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes --no-deps -r requirements/runtime.txt

COPY pyproject.toml alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# Editable, so `cpr db upgrade` finds alembic.ini and migrations/ beside the code. Built
# with the locked setuptools (no build isolation: nothing is fetched), and nothing added.
RUN pip install --no-deps --no-build-isolation -e . \
    && pip check \
    && chown -R root:root /srv && chmod -R a-w /srv \
    && install -d -o cpr -g cpr -m 0700 /var/lib/cpr/checkpoints

USER 10001:10001
# Production refuses to start without its keys. The API reads the ES256 token signing keys
# from CPR_KEY_DIR (a secret shared by every API replica); the worker reads the Ed25519
# checkpoint key (another secret, which API replicas do not get) and copies checkpoints to
# CPR_CHECKPOINT_DIR: mount storage there that the database's administrators cannot
# rewrite (docs/audit-log.md). Set DATABASE_URL (the login role; the service acts as
# CPR_DATABASE_ROLE).
ENV CPR_ENVIRONMENT=production \
    CPR_KEY_DIR=/run/secrets/cpr-keys \
    CPR_CHECKPOINT_KEY_PATH=/run/secrets/cpr-checkpoint/audit-checkpoint.ed25519.pem \
    CPR_CHECKPOINT_DIR=/var/lib/cpr/checkpoints \
    CPR_DATABASE_ROLE=cpr_app
EXPOSE 8000 8081
# The API's liveness. The worker's is GET /livez on CPR_WORKER_HEALTH_PORT (8081): where it
# runs from this image, its healthcheck is set beside the command (deploy/compose/compose.yaml).
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["uvicorn", "app.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--no-access-log", "--workers", "2", "--timeout-graceful-shutdown", "20"]
