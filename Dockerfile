# pdplanner server image: `docker compose up` runs it next to PostgreSQL.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY planner planner
COPY service service
COPY storage storage
COPY clients/python clients/python
RUN pip install --no-cache-dir . \
    && python -c "import planner; planner.warmup()"
ENV PDPLANNER_DATABASE_URL=sqlite:////data/pdplanner.db
VOLUME /data
EXPOSE 50051
CMD ["sh", "-c", "pdplanner db upgrade && pdplanner serve --port 50051"]
