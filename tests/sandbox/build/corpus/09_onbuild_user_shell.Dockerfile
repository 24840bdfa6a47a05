FROM python:3.12-slim AS runtime
ONBUILD ARG PIP_INDEX
ONBUILD RUN pip install -r requirements.txt
ONBUILD COPY <<EOF /onbuild.txt
built
EOF
SHELL ["/bin/sh", "-ec"]
USER nobody
WORKDIR app
WORKDIR ../srv
HEALTHCHECK NONE
STOPSIGNAL 15
CMD python -m http.server
