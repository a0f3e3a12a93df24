# Worker image for the example Study (examples/digits_study); see docker-compose.yml.
FROM python:3.11-slim

# git: Sacred records the commit and dirty flag of the Study's code with every run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir /app

# Workers run from the Study directory: it holds scenarios.py.
WORKDIR /app/examples/digits_study
# Print log lines as they happen (docker compose logs -f worker).
ENV PYTHONUNBUFFERED=1
CMD ["hyperspace_worker", "/app/tasks", "digits", "--mongo-uri", "mongodb://mongo:27017"]
