# pdplanner server image. `docker compose up` runs it next to PostgreSQL (docker-compose.yml);
# alone: docker run -e PDPLANNER_DATABASE_URL=postgresql+psycopg://user@host/db -p 50051:50051 IMAGE
#
# Build stage: a wheel of the project, so the runtime image holds no source tree to shadow it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pdplanner pdplanner
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/pdplanner/numba \
    PDPLANNER_PORT=50051
RUN useradd --system --uid 10001 --create-home --home-dir /home/pdplanner pdplanner \
    && mkdir -p "$NUMBA_CACHE_DIR" \
    && chown pdplanner "$NUMBA_CACHE_DIR"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/entrypoint.sh deploy/healthcheck.py /opt/pdplanner/
USER pdplanner
WORKDIR /home/pdplanner
# Compile the Numba kernels now, as the user that runs them, into the writable cache directory:
# a container then reports SERVING in about a second instead of compiling for tens of seconds.
RUN python -c "from pdplanner import planner; print(f'kernels compiled in {planner.warmup():.1f} s')"
EXPOSE 50051
# SERVING on grpc.health.v1 only once migrations ran and the kernels are loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/pdplanner/healthcheck.py"]
ENTRYPOINT ["/opt/pdplanner/entrypoint.sh"]
