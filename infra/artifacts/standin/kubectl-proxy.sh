#!/bin/sh
# luksa/kubectl-proxy stand-in: expose the API server on 127.0.0.1:8001 inside the pod, authenticated with
# the pod's service account, so the other containers can talk plain HTTP to it (the "ambassador" pattern).
sa=/var/run/secrets/kubernetes.io/serviceaccount
if [ -z "$KUBERNETES_SERVICE_HOST" ] || [ ! -r "$sa/token" ]; then
  echo "kubectl-proxy: no service account here (KUBERNETES_SERVICE_HOST unset or $sa/token missing); run me in a pod" >&2
  exit 1
fi
exec /kubectl proxy \
  --server="https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT" \
  --certificate-authority="$sa/ca.crt" \
  --token="$(cat "$sa/token")" \
  --accept-paths='^.*' "$@"
