# The site caching proxy (proxyd); the butler and mirror commands come with it.
#
#   docker build -t butler-cache .
#   docker run -p 8080:8080 -v proxyd-cache:/cache -v "$PWD/config:/config:ro" butler-cache
#
# /config/proxyd.toml is the configuration (see config/proxyd.toml; set [upstreams] there);
# /cache holds the block cache and survives restarts. PROXYD_* environment variables and
# flags after the image name override the file (e.g. --upstream repo=https://...).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY butler butler
COPY proxyd proxyd
COPY mirror mirror
RUN pip install --no-cache-dir . \
    && useradd --system --home-dir /cache proxyd \
    && mkdir -p /cache /config \
    && cp config/proxyd.toml /config/proxyd.toml \
    && chown -R proxyd /cache
USER proxyd
VOLUME ["/cache", "/config"]
EXPOSE 8080
# Inside a container the proxy must listen on all interfaces for the published port to reach
# it; who may reach the port is decided by how it is published.
ENTRYPOINT ["proxyd", "serve", "--config", "/config/proxyd.toml", "--cache-dir", "/cache", "--listen", "0.0.0.0:8080"]
CMD []
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
