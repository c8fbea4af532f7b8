# The one tieredkv image: the operator, the node agent and the vLLM tier plugin the agent's init container
# copies into vLLM pods (with tieredkv_common, the vLLM line table all three read). Build from the repository
# root:
#   docker build -t ghcr.io/tieredkv/tieredkv:0.1.0 .
# The tag is the chart's appVersion (charts/tieredkv/Chart.yaml), which equals the package version.
# TORCH_INDEX_URL picks the torch build: CPU by default (the agent's copy engine imports torch lazily);
# point it at a CUDA wheel index for GPU nodes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with tieredkv and its dependencies (wheels only; no compiler needed) ---
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY agent/ agent/
COPY common/ common/
RUN pip install --only-binary=:all: --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install '.[torch,csi]' \
 && pip uninstall -y pip setuptools wheel

# --- runtime: the virtualenv on a slim Python, as an unprivileged user ---
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# 65532: the conventional "nonroot" uid; the chart's securityContext runs it with a read-only root.
USER 65532:65532
WORKDIR /tmp
# The chart, the agent DaemonSet and the plugin init container each set their own command:
#   tieredkv-operator run ...   tieredkv-agent run   tieredkv-agent install-plugin <dir>
CMD ["tieredkv-operator", "run", "--all-namespaces"]
