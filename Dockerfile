# One image for every BYORouter service; docker-compose.yml chooses the command per container
# (python -m byorouter_gateway | keystore | router | connect | tunnel).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a source change does not reinstall them.
# Every package is checked against the lock's hashes (`make lock` writes them).
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml ./
COPY libs ./libs
COPY cli ./cli
COPY services ./services
COPY clients ./clients
# The tunnel client is installed (the services use its protocol) and built as a wheel that the
# tunnel service serves at /client.
# Built with the locked setuptools (no build isolation), so nothing unpinned is fetched.
RUN pip install --no-deps --no-build-isolation . ./clients/tunnel \
    && pip wheel --no-deps --no-build-isolation -w /app/clients/tunnel/dist ./clients/tunnel \
    && cp clients/tunnel/requirements.lock /app/clients/tunnel/dist/ \
    && rm -rf build clients/tunnel/build

# Services never need root. The keyring lives on a volume only keystore and the setup job mount.
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent byorouter \
    && mkdir -p /var/lib/byorouter \
    && chown byorouter /var/lib/byorouter \
    && chmod 700 /var/lib/byorouter
USER byorouter
ENV BYOROUTER_KEYRING_FILE=/var/lib/byorouter/keyring.json \
    BYOROUTER_CLIENT_DIST_DIR=/app/clients/tunnel/dist

CMD ["python", "-m", "byorouter_gateway"]
