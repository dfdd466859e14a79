# kvrd, the kvr serving daemon, as a container image for GPU nodes (docs/deploy.md).
#
#   docker build -t kvr:latest .                       (or: cd deploy && docker-compose build)
#   docker run --gpus all --ipc host --ulimit memlock=-1 -p 50051:50051 -p 9464:9464 \
#     -v /srv/models/llama3-8b:/models/model:ro kvr:latest
#
# Stage `build` runs the very steps of scripts/start.sh: scripts/install-deps.sh, then the same
# CMake invocation; CI runs the same script and CMake flags (scripts/test.sh), and
# tests/deploy/dockerfile_drift_test.py fails when this file and those scripts drift apart.
ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=24.04

# ---- build: CUDA 13 toolkit + Ubuntu's packages, compiled as scripts/start.sh does -------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
WORKDIR /src/kvr
# The dependency layer first, so that it is cached across source changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh
COPY . .
# KVR_CUDA=ON: an image without the CUDA backend would be no use on a GPU node; fail instead.
ENV BUILD_DIR=build KVR_CMAKE_ARGS="-DKVR_CUDA=ON -DKVR_SERVER=ON"
RUN cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${KVR_CMAKE_ARGS:-}
RUN cmake --build "$BUILD_DIR" -j"$(nproc)" --target kvrd
# start.sh prepares the demo model when no --model is given; the image bakes it in. Its
# tokenizer.json is fetched, not committed: a no-op when the build context already has it, else
# prepare_demo.sh needs node and npm.
RUN models/prepare_demo.sh || { apt-get update -qq \
      && apt-get install -y -qq --no-install-recommends nodejs npm && models/prepare_demo.sh; }

# ---- runtime: CUDA run-time libraries (cuBLAS included) + kvrd's libraries -------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /src/kvr/build/server/kvrd /opt/kvr/bin/kvrd
# The CUDA backend module, which kvrd loads at run time (engine/core/cuda_backend.h says why).
COPY --from=build /src/kvr/build/lib/libkvr_cuda_backend.so /opt/kvr/lib/kvr/libkvr_cuda_backend.so
# Every shared library kvrd and the module need must be here now; libcuda comes from the driver.
RUN if ldd /opt/kvr/bin/kvrd /opt/kvr/lib/kvr/libkvr_cuda_backend.so | grep -v 'libcuda\.so' | grep 'not found'; then \
      echo "runtime image lacks the libraries above: fix install-deps.sh --runtime" >&2; exit 1; fi
COPY --from=build /src/kvr/models/kvr-demo /opt/kvr/models/kvr-demo
COPY deploy/kvrd/entrypoint.sh /opt/kvr/bin/kvrd-entrypoint
COPY deploy/kvrd/healthcheck.py /opt/kvr/bin/kvr-healthcheck
COPY deploy/kvrd/kvrd.json /etc/kvr/kvrd.json
# KVR-P split tables searched on the device (kvrd.json's partition reads h200.json).
COPY config /opt/kvr/config
# A non-root user; the model folder is mounted read-only at /models/model.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin kvr \
 && mkdir -p /models/model
USER kvr
ENV KVR_LISTEN=0.0.0.0:50051 KVR_METRICS_LISTEN=0.0.0.0:9464
# gRPC (kvr.v1 + grpc.health.v1 + reflection) and Prometheus /metrics.
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/opt/kvr/bin/kvr-healthcheck"]
# SIGTERM: kvrd stops admitting, lets running streams finish (shutdown_timeout_s), then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/kvr/bin/kvrd-entrypoint"]
CMD []
