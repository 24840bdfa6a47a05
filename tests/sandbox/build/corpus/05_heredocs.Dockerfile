FROM debian:bookworm
RUN <<EOF
set -e
apt-get update
EOF
RUN <<-EOT bash
	echo "tabs stripped by the shell"
	EOT
RUN <<EOF1 cat > /a && <<EOF2 cat > /b
first $HOME
EOF1
second
EOF2
RUN <<'PY'
#!/usr/bin/env python3
print("hello from python")
PY
ENV GREETING=hello
COPY <<EOF /etc/greeting
$GREETING world
EOF
COPY <<"RAW" <<-cooked.txt /etc/
no $GREETING expansion
RAW
	cooked $GREETING
	cooked.txt
RUN echo "<<NOT_A_HEREDOC" && cat<<ALSO_NOT
