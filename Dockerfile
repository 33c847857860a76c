# The poolwatch demo image (used by docker-compose.yml): the pool, the exporter and the
# load scenarios. The demo reads its database from $POOLWATCH_DSN.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# The slim image has no C compiler: setup.py's optional extension (the compiled
# connection() blocks) is skipped, and the pools use their Python blocks.
RUN pip install --no-cache-dir ".[demo]"
USER nobody
EXPOSE 8000
CMD ["poolwatch", "demo", "--host", "0.0.0.0", "--port", "8000"]
