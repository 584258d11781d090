#!/bin/sh
# The container's entrypoint: `--ratio 3 …` -> `ratio-cnn train --ratio 3 …`; anything else runs as given.
set -e
case "${1:-}" in
  --*) exec ratio-cnn train "$@" ;;
  *) exec "$@" ;;
esac
