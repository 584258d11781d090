# One ratio of the study per container: `docker run --gpus all ratio-cnn --ratio 3`.
# The official PyTorch CUDA runtime image: its torch is kept, ratio-cnn and Prefect go on top.
FROM pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ratio_cnn/ ratio_cnn/
COPY flows/ flows/
COPY deploy/ deploy/
# Versions are bounded in pyproject.toml; the base image pins torch itself.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[flows]" \
    && useradd --create-home --uid 10001 ratio \
    && mkdir -p /app/results /app/data \
    && chown ratio /app/results /app/data

USER 10001
# Arguments that begin with `--` go to `ratio-cnn train`; any other command runs as given
# (Prefect's Docker worker sends `prefect flow-run execute`).
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["--help"]
