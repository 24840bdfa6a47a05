#!/bin/sh
echo "app says $GREETING"
