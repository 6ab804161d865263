# Image for the site caching proxy (proxyd); the butler and mirror commands come with it.
#   docker build -t butler-cache .
#   docker run -p 8080:8080 -v proxyd-cache:/cache -v $PWD/config:/config butler-cache
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY butler butler
COPY proxyd proxyd
COPY mirror mirror
RUN pip install --no-cache-dir . && useradd --system --home /cache proxyd \
    && mkdir -p /cache && chown proxyd /cache
USER proxyd
VOLUME ["/cache", "/config"]
EXPOSE 8080
ENTRYPOINT ["proxyd"]
CMD ["--help"]
