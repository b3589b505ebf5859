# stream_app worker image: python:3.11-slim, installed into a venv in a build stage, run as a non-root user.
# The ONNX model ships inside the package (stream_app/model_files): nothing is downloaded at run time.
#   docker build -t stream-app:0.1.0 .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=host:9092 -p 6066:6066 stream-app:0.1.0            # worker
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=host:9092 stream-app:0.1.0 topics                  # create topics
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# setuptools reads README.md (the project's readme) while building the wheel
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .

FROM python:3.11-slim
ARG UID=10001
RUN useradd --system --uid ${UID} --user-group --home-dir /app --create-home --shell /usr/sbin/nologin stream \
    && mkdir /data && chown ${UID}:${UID} /data
COPY --from=build /opt/venv /opt/venv
# NUMBA_CACHE_DIR: where the compiled learning loops are cached (stream_app/models/kernels.py); under /tmp, which
# k8s mounts as an emptyDir beside its read-only root file system, so a restarted container loads them.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAM_APP_DATA_DIR=/data \
    STREAM_APP_WEB_HOST=0.0.0.0 \
    STREAM_APP_WEB_PORT=6066 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 6066
# liveness only (/health); /ready is for orchestrators that route traffic
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('STREAM_APP_WEB_PORT', '6066'), timeout=4)"]
ENTRYPOINT ["stream-app"]
CMD ["worker"]
