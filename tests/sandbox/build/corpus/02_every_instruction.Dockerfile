# syntax=docker/dockerfile:1.7
# check=skip=JSONArgsRecommended
ARG BASE_IMAGE=debian:bookworm-slim
FROM --platform=linux/amd64 $BASE_IMAGE AS base
MAINTAINER Jane Doe <jane@example.com>
LABEL org.opencontainers.image.title="demo app" version=1.0 "quoted key"=v
ENV APP_HOME=/srv/app PATH=/srv/app/bin:$PATH
ARG UID=1000
WORKDIR $APP_HOME
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --network=none apt-get update
RUN ["echo", "exec", "form"]
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar.gz /tmp/
ADD --chown=app:app --chmod=0644 --link vendor.tar /opt/
COPY --chown=${UID}:${UID} --chmod=755 --link --parents ./bin/ ./lib/ ${APP_HOME}/
COPY ["with space.txt", "/dst dir/"]
USER ${UID}:${UID}
EXPOSE 8080 8443/tcp 53/udp 9000-9002
VOLUME /data /logs
VOLUME ["/cache"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --start-interval=2s --retries=4 CMD ["curl", "-f", "http://localhost:8080/"]
ONBUILD COPY . /src
ENTRYPOINT ["/srv/app/bin/server"]
CMD ["--port", "8080"]
