# Production image: slim, non-root, static files collected at build time, gunicorn with uvicorn workers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -m venv /venv && /venv/bin/pip install --upgrade pip && /venv/bin/pip install .
COPY . .
# collectstatic needs settings to load; these throwaway values exist only in this build step.
RUN SECRET_KEY=build ENCRYPTION_KEYS=$(/venv/bin/python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())") \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 /venv/bin/python manage.py collectstatic --noinput --verbosity 0

FROM python:3.11-slim
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    BIND=0.0.0.0:8000 PORT=8000 DEBUG=false
RUN useradd --system --uid 10001 --home /app llmproxy
WORKDIR /app
COPY --from=build /venv /venv
COPY --from=build --chown=llmproxy:llmproxy /app /app
RUN mkdir -p /app/data && chown llmproxy:llmproxy /app/data
USER llmproxy
EXPOSE 8000
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"
# Migrate, then serve. SECRET_KEY and ENCRYPTION_KEYS must come from the environment (the app refuses to start
# without them).
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn -c gunicorn.conf.py llmproxy.asgi:application"]
