#!/bin/sh
# luksa/fortune stand-in: every N seconds write a fortune to /var/htdocs/index.html for the web server
# container that shares the volume. N is $1 (fortune:args) or $INTERVAL (fortune:env).
interval=${1:-${INTERVAL:-10}}
trap 'exit 0' INT TERM
echo "Configured to generate new fortune every $interval seconds"
mkdir -p /var/htdocs
while :; do
  echo "$(date) Writing fortune to /var/htdocs/index.html"
  /usr/games/fortune > /var/htdocs/index.html
  # Sleep in the background so TERM is handled at once rather than after the interval.
  sleep "$interval" & wait $!
done
