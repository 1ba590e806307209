# The two commands: `make run` (set up and serve) and `make test` (set up and run the whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test setup lint format bench bench-compare bench-side-by-side bench-admin bench-faults cluster clean

run: setup
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_admin
	@echo "Serving on http://127.0.0.1:$${PORT:-8000}/admin/ (proxy at http://127.0.0.1:$${PORT:-8000}/v1)"
	$(VENV)/bin/gunicorn -c gunicorn.conf.py llmproxy.asgi:application

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(STAMP) .env

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

.env: | $(STAMP)
	$(PY) -m llmproxy.envfile .env

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/proxy_bench.py

# The shared benchmark (SHARED_BENCH, default ../shared/bench) on a fresh database: SQLite, or DATABASE_URL's PostgreSQL.
bench-compare: setup
	$(PY) bench/compare.py

# This checkout against BASE (a revision), both served at once behind the shared benchmark's mock.
bench-side-by-side: setup
	$(PY) bench/side_by_side.py $(BASE)

bench-admin: setup
	$(PY) bench/admin_bench.py

bench-faults: setup
	$(PY) bench/faults.py

# Several instances behind HAProxy on the PostgreSQL of DATABASE_URL (see the README's "Running several instances").
cluster: setup
	$(PY) manage.py migrate --noinput
	$(PY) deploy/cluster.py

clean:
	rm -rf $(VENV) data/static data/test*.sqlite3
